//! The link's frames: a 9-byte header (stream id u32 LE, kind u8, payload length u32 LE) and
//! a payload of at most [`MAX_PAYLOAD`] bytes. Every field the peer sends is checked here
//! before anything acts on it.

use crate::Error;

/// Header bytes before every payload.
pub const HEADER: usize = 9;
/// Longest payload of one frame.
pub const MAX_PAYLOAD: usize = 32 << 10;
/// Bytes either side may send on a stream before the other grants more ([`Kind::Credit`]).
pub const WINDOW: u32 = 256 << 10;
/// Bytes of a whole [`Kind::Hello`] frame.
pub const HELLO_LEN: usize = HEADER + 4;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[repr(u8)]
pub enum Kind {
    /// Host → guest, stream 0, payload a nonce: a new host side; every stream of an earlier
    /// one is gone. The guest answers with the same frame, and the host reads the guest's
    /// frames from just after that echo (`Sync` in the engine).
    Hello = 1,
    /// Initiator → acceptor: open this stream to the port in the payload (u32 LE).
    Open = 2,
    /// Acceptor → initiator: the stream is open; both may send [`WINDOW`] bytes.
    Accept = 3,
    /// Acceptor → initiator: nothing listens on that port.
    Refuse = 4,
    /// Bytes of the stream.
    Data = 5,
    /// The payload (u32 LE) more bytes may be sent.
    Credit = 6,
    /// The sender sends no more on this stream (its end of the stream is at EOF).
    Shut = 7,
    /// The stream is gone both ways.
    Reset = 8,
}

impl Kind {
    fn from_u8(b: u8) -> Option<Kind> {
        Some(match b {
            1 => Kind::Hello,
            2 => Kind::Open,
            3 => Kind::Accept,
            4 => Kind::Refuse,
            5 => Kind::Data,
            6 => Kind::Credit,
            7 => Kind::Shut,
            8 => Kind::Reset,
            _ => return None,
        })
    }

    /// The payload length this kind must have (`None`: any up to [`MAX_PAYLOAD`], for data).
    fn fixed_len(self) -> Option<usize> {
        match self {
            Kind::Hello | Kind::Open | Kind::Credit => Some(4),
            Kind::Data => None,
            Kind::Accept | Kind::Refuse | Kind::Shut | Kind::Reset => Some(0),
        }
    }
}

/// One decoded frame, borrowing its payload from the receive buffer.
#[derive(Debug, PartialEq, Eq)]
pub struct Frame<'a> {
    pub stream: u32,
    pub kind: Kind,
    pub payload: &'a [u8],
}

impl Frame<'_> {
    /// The payload of a 4-byte frame as a number.
    pub fn word(&self) -> u32 {
        let mut b = [0u8; 4];
        b.copy_from_slice(&self.payload[..4]);
        u32::from_le_bytes(b)
    }
}

/// Appends one frame to `out`. `payload` must be at most [`MAX_PAYLOAD`] bytes (callers cut
/// data to that size).
pub fn encode(out: &mut Vec<u8>, stream: u32, kind: Kind, payload: &[u8]) {
    debug_assert!(payload.len() <= MAX_PAYLOAD);
    out.extend_from_slice(&stream.to_le_bytes());
    out.push(kind as u8);
    out.extend_from_slice(&(payload.len() as u32).to_le_bytes());
    out.extend_from_slice(payload);
}

/// Appends a frame whose payload is one u32.
pub fn encode_word(out: &mut Vec<u8>, stream: u32, kind: Kind, word: u32) {
    encode(out, stream, kind, &word.to_le_bytes());
}

/// Looks for a [`Kind::Hello`] in `buf` while the link is out of step: the guest echoing
/// `echo_of` (the host's nonce), or (`None`) any host Hello. Returns how many bytes
/// come before it and whether it was found; when it was not, the bytes skipped leave just
/// enough at the end for a Hello that has only begun to arrive.
pub(crate) fn find_hello(buf: &[u8], echo_of: Option<u32>) -> (usize, bool) {
    let mut want = [0u8; HELLO_LEN];
    want[4] = Kind::Hello as u8;
    want[5] = 4;
    let len = match echo_of {
        Some(nonce) => {
            want[HEADER..].copy_from_slice(&nonce.to_le_bytes());
            HELLO_LEN
        }
        None => HEADER,
    };
    let want = &want[..len];
    match buf.windows(len).position(|w| w == want) {
        Some(i) => (i, true),
        None => (buf.len().saturating_sub(len - 1), false),
    }
}

/// Decodes the frame at the start of `buf`: `Ok(None)` when it is not all there yet, else the
/// frame and how many bytes it took. A header no frame can have is an error: the link has
/// lost its place and nothing after it can be trusted.
pub fn decode(buf: &[u8]) -> Result<Option<(Frame<'_>, usize)>, Error> {
    if buf.len() < HEADER {
        return Ok(None);
    }
    let stream = u32::from_le_bytes([buf[0], buf[1], buf[2], buf[3]]);
    let kind = Kind::from_u8(buf[4]).ok_or(Error::BadFrame {
        stream,
        what: "unknown kind",
        value: u64::from(buf[4]),
    })?;
    let len = u32::from_le_bytes([buf[5], buf[6], buf[7], buf[8]]) as usize;
    let bad_len = match kind.fixed_len() {
        Some(want) => len != want,
        None => len > MAX_PAYLOAD,
    };
    if bad_len {
        return Err(Error::BadFrame {
            stream,
            what: "payload length",
            value: len as u64,
        });
    }
    if buf.len() < HEADER + len {
        return Ok(None);
    }
    let payload = &buf[HEADER..HEADER + len];
    Ok(Some((
        Frame {
            stream,
            kind,
            payload,
        },
        HEADER + len,
    )))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn frames_round_trip_and_wait_for_their_bytes() {
        let mut b = Vec::new();
        encode(&mut b, 7, Kind::Data, b"hello");
        encode_word(&mut b, 7, Kind::Credit, 1234);
        for cut in 0..HEADER + 5 {
            assert_eq!(decode(&b[..cut]).unwrap(), None, "{cut}");
        }
        let (f, n) = decode(&b).unwrap().unwrap();
        assert_eq!(
            (f.stream, f.kind, f.payload),
            (7, Kind::Data, &b"hello"[..])
        );
        let (f, m) = decode(&b[n..]).unwrap().unwrap();
        assert_eq!((f.kind, f.word(), n + m), (Kind::Credit, 1234, b.len()));
    }

    #[test]
    fn impossible_headers_are_errors() {
        let mut b = Vec::new();
        encode(&mut b, 1, Kind::Data, b"");
        b[4] = 99;
        assert!(decode(&b).is_err());
        for (kind, len) in [
            (Kind::Data, MAX_PAYLOAD as u32 + 1),
            (Kind::Credit, 3),
            (Kind::Open, 5),
            (Kind::Shut, 1),
            (Kind::Hello, u32::MAX),
        ] {
            let mut b = Vec::new();
            b.extend_from_slice(&1u32.to_le_bytes());
            b.push(kind as u8);
            b.extend_from_slice(&len.to_le_bytes());
            let e = decode(&b).unwrap_err().to_string();
            assert!(e.contains("payload length"), "{kind:?}: {e}");
        }
    }
}
