//! Framing: `[u32 length, big-endian][payload]`, one message per frame.
//!
//! Framing is kept apart from the JSON codec so a reader can bound memory and detect a torn
//! stream before it parses anything. The length is checked against [`MAX_FRAME_LEN`] the moment
//! the four header bytes are in, so a hostile or desynchronised peer cannot make us allocate
//! more than the cap. A zero length is rejected too: no message encodes to nothing, and a run of
//! zero bytes is the usual sign of a stream that lost its place.

mod decoder;

pub use decoder::FrameDecoder;

use std::fmt;
use std::io::{self, Read, Write};

use crate::limits::MAX_FRAME_LEN;

/// Bytes in the length prefix.
pub const HEADER_LEN: usize = 4;

/// What can go wrong moving frames. Once any of these is returned the stream has lost its
/// place and the connection should be dropped.
#[derive(Debug)]
pub enum FrameError {
    /// The underlying reader or writer failed.
    Io(io::Error),
    /// A length prefix (read) or payload (write) above the cap.
    TooLarge { len: usize, max: usize },
    /// A zero-length frame.
    Empty,
    /// The stream ended inside the four length bytes.
    TruncatedHeader { got: usize },
    /// The stream ended inside a payload.
    TruncatedPayload { expected: usize, got: usize },
}

impl fmt::Display for FrameError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            FrameError::Io(e) => write!(f, "frame i/o failed: {e}"),
            FrameError::TooLarge { len, max } => write!(
                f,
                "frame of {len} bytes exceeds the {max}-byte cap (peer out of sync or hostile)"
            ),
            FrameError::Empty => write!(f, "empty frame (zero length prefix)"),
            FrameError::TruncatedHeader { got } => write!(
                f,
                "stream ended inside a frame header ({got} of {HEADER_LEN} bytes)"
            ),
            FrameError::TruncatedPayload { expected, got } => write!(
                f,
                "stream ended inside a frame payload ({got} of {expected} bytes)"
            ),
        }
    }
}

impl std::error::Error for FrameError {
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        match self {
            FrameError::Io(e) => Some(e),
            _ => None,
        }
    }
}

impl From<io::Error> for FrameError {
    fn from(e: io::Error) -> Self {
        FrameError::Io(e)
    }
}

/// Checks a payload length against the frame rules; shared by both directions so the writer
/// can never produce a frame the reader would refuse.
pub(crate) fn check_len(len: usize) -> Result<(), FrameError> {
    if len == 0 {
        return Err(FrameError::Empty);
    }
    if len > MAX_FRAME_LEN {
        return Err(FrameError::TooLarge {
            len,
            max: MAX_FRAME_LEN,
        });
    }
    Ok(())
}

/// Writes one frame and flushes, so a buffered writer never sits on a request the peer is
/// waiting for. Nothing is written if the payload breaks the frame rules.
pub fn write_frame(w: &mut impl Write, payload: &[u8]) -> Result<(), FrameError> {
    check_len(payload.len())?;
    // check_len bounds len to MAX_FRAME_LEN, which fits in u32.
    let header = (payload.len() as u32).to_be_bytes();
    w.write_all(&header)?;
    w.write_all(payload)?;
    w.flush()?;
    Ok(())
}

/// Reads one frame from a blocking reader.
///
/// Returns `Ok(None)` on a clean end of stream between frames (the peer closed), and an error
/// if the stream ends inside a frame. For non-blocking readers use [`FrameDecoder`]: this
/// function would treat `WouldBlock` as an error and lose its place.
pub fn read_frame(r: &mut impl Read) -> Result<Option<Vec<u8>>, FrameError> {
    let mut header = [0u8; HEADER_LEN];
    let got = read_full(r, &mut header)?;
    if got == 0 {
        return Ok(None);
    }
    if got < HEADER_LEN {
        return Err(FrameError::TruncatedHeader { got });
    }
    let len = u32::from_be_bytes(header) as usize;
    check_len(len)?;
    // Grow with the bytes that actually arrive rather than trusting the prefix up front.
    let mut payload = Vec::new();
    r.take(len as u64).read_to_end(&mut payload)?;
    if payload.len() < len {
        return Err(FrameError::TruncatedPayload {
            expected: len,
            got: payload.len(),
        });
    }
    Ok(Some(payload))
}

/// Fills `buf` unless the stream ends first; returns how many bytes arrived.
fn read_full(r: &mut impl Read, buf: &mut [u8]) -> Result<usize, FrameError> {
    let mut got = 0;
    while got < buf.len() {
        match r.read(&mut buf[got..]) {
            Ok(0) => break,
            Ok(n) => got += n,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
            Err(e) => return Err(FrameError::Io(e)),
        }
    }
    Ok(got)
}

#[cfg(test)]
mod tests;
