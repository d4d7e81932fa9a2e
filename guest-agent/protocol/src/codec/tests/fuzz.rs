//! Property-style checks: arbitrary and mutated bytes never panic any decode path.

use super::fixtures;
use crate::codec::*;
use crate::frame::{read_frame, FrameDecoder};
use crate::messages::*;

/// xorshift64*: deterministic, so a failure reproduces from the printed iteration number.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_f491_4f6c_dd1d)
    }

    fn below(&mut self, n: usize) -> usize {
        (self.next() % n as u64) as usize
    }

    fn bytes(&mut self, max_len: usize) -> Vec<u8> {
        let len = self.below(max_len + 1);
        (0..len).map(|_| self.next() as u8).collect()
    }
}

/// Runs every decoder over `bytes`; the assertion is that this returns at all.
fn decode_everything(bytes: &[u8]) {
    let _ = decode::<Request>(bytes);
    let _ = decode::<Response>(bytes);
    let _ = decode::<StreamHello>(bytes);
    let _ = decode::<StreamReply>(bytes);
    let _ = decode_opening(bytes);
    let _ = peek_request_id(bytes);
    let mut r = bytes;
    while let Ok(Some(_)) = read_frame(&mut r) {}
    let mut d = FrameDecoder::new();
    d.push(bytes);
    while let Ok(Some(_)) = d.next_frame() {}
    let _ = d.finish();
}

#[test]
fn random_bytes_never_panic() {
    let mut rng = Rng(0x9e37_79b9_7f4a_7c15);
    for _ in 0..20_000 {
        let bytes = rng.bytes(64);
        decode_everything(&bytes);
    }
}

#[test]
fn mutated_valid_messages_never_panic() {
    let mut seeds: Vec<Vec<u8>> = Vec::new();
    seeds.extend(
        fixtures::requests()
            .iter()
            .map(|m| encode(m).expect("encode")),
    );
    seeds.extend(
        fixtures::responses()
            .iter()
            .map(|m| encode(m).expect("encode")),
    );
    seeds.extend(
        fixtures::stream_hellos()
            .iter()
            .map(|m| encode(m).expect("encode")),
    );
    // Bytes that matter to the JSON grammar, so mutations reach deep into the parser.
    const INTERESTING: &[u8] = b"{}[]\":,0-9en\\\0\xff";
    let mut rng = Rng(42);
    let mut decoded_ok = 0;
    for _ in 0..5_000 {
        let mut bytes = seeds[rng.below(seeds.len())].clone();
        for _ in 0..=rng.below(4) {
            let at = rng.below(bytes.len());
            match rng.below(4) {
                0 => bytes[at] = rng.next() as u8,
                1 => bytes[at] = INTERESTING[rng.below(INTERESTING.len())],
                2 => {
                    bytes.remove(at);
                    if bytes.is_empty() {
                        bytes.push(b'{');
                    }
                }
                _ => bytes.truncate(at.max(1)),
            }
        }
        decode_everything(&bytes);
        if decode::<Request>(&bytes).is_ok() {
            decoded_ok += 1;
        }
    }
    // Sanity: the mutations are not so heavy that nothing parses, nor so light that all do.
    assert!(decoded_ok < 5_000, "mutations never broke anything");
}

#[test]
fn random_frame_streams_never_panic_the_decoder() {
    let mut rng = Rng(7);
    for _ in 0..2_000 {
        let mut d = FrameDecoder::new();
        for _ in 0..rng.below(8) {
            // Small big-endian prefixes are likely, so frames actually complete.
            let mut chunk = vec![0, 0, 0, rng.below(16) as u8];
            chunk.extend(rng.bytes(24));
            d.push(&chunk);
            while let Ok(Some(f)) = d.next_frame() {
                assert!(!f.is_empty());
                let _ = decode::<Request>(&f);
            }
        }
        let _ = d.finish();
    }
}
