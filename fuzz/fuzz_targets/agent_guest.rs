//! The agent protocol as the guest agent decodes it (the host is not trusted to be
//! well-formed either): a byte stream framed by `read_frame` and by `FrameDecoder` fed in
//! arbitrary chunks (the two must agree), the first frame through `decode_opening`, the rest
//! through `decode::<Request>`, failures through the agent's error reply. What decodes must
//! re-encode (validation is symmetric) and decode back to the same message.
#![no_main]

use husk_protocol::codec::{decode_opening, encode, Opening};
use husk_protocol::{
    decode, peek_request_id, read_frame, FrameDecoder, Request, Response, StreamHello,
};
use libfuzzer_sys::fuzz_target;

fn roundtrip<M: husk_protocol::codec::Message + PartialEq + std::fmt::Debug>(msg: &M) {
    let bytes = encode(msg).expect("a message that decoded must encode");
    let back: M = decode(&bytes).expect("an encoded message must decode");
    assert_eq!(&back, msg, "message changed through encode/decode");
}

fuzz_target!(|data: &[u8]| {
    let Some((&chunk, stream)) = data.split_first() else {
        return;
    };
    // Frames as the agent's blocking reader sees them.
    let mut cursor = stream;
    let mut frames = Vec::new();
    let reader_end = loop {
        match read_frame(&mut cursor) {
            Ok(Some(f)) => frames.push(f),
            Ok(None) => break Ok(()),
            Err(e) => break Err(e),
        }
    };
    // The same stream through the incremental decoder, in chunks of 1..=256 bytes.
    let mut dec = FrameDecoder::new();
    let mut incremental = Vec::new();
    let mut dec_err = None;
    'feed: for piece in stream.chunks(usize::from(chunk) + 1) {
        dec.push(piece);
        loop {
            match dec.next_frame() {
                Ok(Some(f)) => incremental.push(f),
                Ok(None) => break,
                Err(e) => {
                    dec_err = Some(e);
                    break 'feed;
                }
            }
        }
    }
    assert_eq!(
        frames, incremental,
        "read_frame and FrameDecoder split the stream differently"
    );
    if reader_end.is_ok() {
        assert!(
            dec_err.is_none() && dec.finish().is_ok(),
            "decoder failed a stream read_frame accepted"
        );
    } else {
        assert!(
            dec_err.is_some() || dec.finish().is_err(),
            "decoder accepted a stream read_frame refused"
        );
    }

    for (i, payload) in frames.iter().enumerate() {
        let result = if i == 0 {
            decode_opening(payload).map(|o| match o {
                Opening::Control(req) => roundtrip(&req),
                Opening::Stream(hello) => roundtrip::<StreamHello>(&hello),
            })
        } else {
            decode::<Request>(payload).map(|req| roundtrip(&req))
        };
        if let Err(e) = result {
            // The agent's answer to a bad request must itself be sendable.
            let reply = Response::err(peek_request_id(payload).unwrap_or(0), e.to_reply());
            encode(&reply).expect("the agent's error reply must encode");
        }
    }
});
