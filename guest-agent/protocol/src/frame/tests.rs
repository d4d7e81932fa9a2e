use std::io::{self, Cursor, Read};

use super::*;

fn framed(payloads: &[&[u8]]) -> Vec<u8> {
    let mut out = Vec::new();
    for p in payloads {
        write_frame(&mut out, p).expect("write");
    }
    out
}

#[test]
fn write_then_read_round_trips_and_ends_cleanly() {
    let bytes = framed(&[b"one", b"{\"x\":2}", &[0xff; 1000]]);
    assert_eq!(&bytes[..4], &[0, 0, 0, 3], "length is big-endian u32");
    let mut r = Cursor::new(bytes);
    assert_eq!(read_frame(&mut r).expect("1").as_deref(), Some(&b"one"[..]));
    assert_eq!(
        read_frame(&mut r).expect("2").as_deref(),
        Some(&b"{\"x\":2}"[..])
    );
    assert_eq!(read_frame(&mut r).expect("3").map(|v| v.len()), Some(1000));
    assert!(read_frame(&mut r).expect("eof").is_none());
}

#[test]
fn truncated_header_and_payload_are_errors() {
    let bytes = framed(&[b"hello"]);
    for cut in 1..bytes.len() {
        let err = read_frame(&mut Cursor::new(&bytes[..cut])).expect_err("truncated");
        match err {
            FrameError::TruncatedHeader { got } => assert_eq!(got, cut),
            FrameError::TruncatedPayload { expected, got } => {
                assert_eq!((expected, got), (5, cut - HEADER_LEN));
            }
            other => panic!("cut {cut}: unexpected {other}"),
        }
    }
}

/// A reader that would hand out endless bytes after the header: if `read_frame` trusted a
/// huge prefix it would try to read (and allocate) all of it.
struct HugePrefix {
    header: Cursor<[u8; 4]>,
    served: usize,
}

impl Read for HugePrefix {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        let n = self.header.read(buf)?;
        if n > 0 {
            return Ok(n);
        }
        self.served += buf.len();
        buf.fill(b'x');
        Ok(buf.len())
    }
}

#[test]
fn oversize_prefix_is_rejected_before_reading_payload() {
    for len in [MAX_FRAME_LEN as u32 + 1, u32::MAX] {
        let mut r = HugePrefix {
            header: Cursor::new(len.to_be_bytes()),
            served: 0,
        };
        match read_frame(&mut r) {
            Err(FrameError::TooLarge { len: l, max }) => {
                assert_eq!((l, max), (len as usize, MAX_FRAME_LEN));
            }
            other => panic!("expected TooLarge, got {other:?}"),
        }
        assert_eq!(
            r.served, 0,
            "payload bytes were read after an oversize prefix"
        );
    }
}

#[test]
fn max_size_frame_is_accepted_and_one_more_byte_is_not() {
    let big = vec![7u8; MAX_FRAME_LEN];
    let bytes = framed(&[&big]);
    let back = read_frame(&mut Cursor::new(bytes))
        .expect("read")
        .expect("frame");
    assert_eq!(back.len(), MAX_FRAME_LEN);
    let mut sink = Vec::new();
    let too_big = vec![7u8; MAX_FRAME_LEN + 1];
    assert!(matches!(
        write_frame(&mut sink, &too_big),
        Err(FrameError::TooLarge { .. })
    ));
    assert!(
        sink.is_empty(),
        "nothing may be written for a refused frame"
    );
}

#[test]
fn empty_frames_are_refused_both_ways() {
    let mut sink = Vec::new();
    assert!(matches!(
        write_frame(&mut sink, b""),
        Err(FrameError::Empty)
    ));
    assert!(sink.is_empty());
    let r = read_frame(&mut Cursor::new([0u8, 0, 0, 0, b'x']));
    assert!(matches!(r, Err(FrameError::Empty)));
}

/// Interrupted reads and one-byte reads must not tear frames.
struct Trickle<'a> {
    data: &'a [u8],
    interrupt_next: bool,
}

impl Read for Trickle<'_> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        self.interrupt_next = !self.interrupt_next;
        if self.interrupt_next {
            return Err(io::ErrorKind::Interrupted.into());
        }
        let Some((first, rest)) = self.data.split_first() else {
            return Ok(0);
        };
        match buf.first_mut() {
            Some(slot) => *slot = *first,
            None => return Ok(0),
        }
        self.data = rest;
        Ok(1)
    }
}

#[test]
fn read_frame_survives_interrupts_and_short_reads() {
    let bytes = framed(&[b"abc", b"defgh"]);
    let mut r = Trickle {
        data: &bytes,
        interrupt_next: false,
    };
    assert_eq!(read_frame(&mut r).expect("1").as_deref(), Some(&b"abc"[..]));
    assert_eq!(
        read_frame(&mut r).expect("2").as_deref(),
        Some(&b"defgh"[..])
    );
    assert!(read_frame(&mut r).expect("eof").is_none());
}

#[test]
fn decoder_fed_byte_by_byte_yields_every_frame() {
    let payloads: Vec<Vec<u8>> = (1..=50).map(|n| vec![n as u8; n * 7]).collect();
    let refs: Vec<&[u8]> = payloads.iter().map(|p| p.as_slice()).collect();
    let bytes = framed(&refs);
    let mut d = FrameDecoder::new();
    let mut got = Vec::new();
    for b in &bytes {
        d.push(std::slice::from_ref(b));
        while let Some(f) = d.next_frame().expect("frame") {
            got.push(f);
        }
    }
    assert_eq!(got, payloads);
    assert_eq!(d.buffered(), 0);
    d.finish().expect("clean end");
}

#[test]
fn decoder_pops_several_frames_from_one_push() {
    let bytes = framed(&[b"a", b"bb", b"ccc"]);
    let mut d = FrameDecoder::new();
    d.push(&bytes[..bytes.len() - 1]);
    assert_eq!(d.next_frame().expect("a").as_deref(), Some(&b"a"[..]));
    assert_eq!(d.next_frame().expect("bb").as_deref(), Some(&b"bb"[..]));
    assert_eq!(d.next_frame().expect("partial"), None);
    assert!(matches!(
        d.finish(),
        Err(FrameError::TruncatedPayload {
            expected: 3,
            got: 2
        })
    ));
    d.push(&bytes[bytes.len() - 1..]);
    assert_eq!(d.next_frame().expect("ccc").as_deref(), Some(&b"ccc"[..]));
    d.finish().expect("clean end");
}

#[test]
fn decoder_reports_truncated_header_at_finish() {
    let mut d = FrameDecoder::new();
    d.push(&[0, 0]);
    assert_eq!(d.next_frame().expect("partial"), None);
    assert!(matches!(
        d.finish(),
        Err(FrameError::TruncatedHeader { got: 2 })
    ));
}

#[test]
fn decoder_poisons_on_oversize_or_empty_prefix() {
    let mut d = FrameDecoder::new();
    d.push(&u32::MAX.to_be_bytes());
    assert!(matches!(d.next_frame(), Err(FrameError::TooLarge { .. })));
    d.push(&framed(&[b"late"]));
    assert!(
        matches!(d.next_frame(), Err(FrameError::TooLarge { .. })),
        "stays poisoned"
    );
    assert!(d.finish().is_err());

    let mut d = FrameDecoder::new();
    d.push(&[0, 0, 0, 0]);
    assert!(matches!(d.next_frame(), Err(FrameError::Empty)));
}
