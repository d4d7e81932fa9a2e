//! Incremental frame decoding for non-blocking readers (the agent's event loop, the host's
//! epoll-driven client): push whatever bytes arrived, pop every complete frame.

use super::{check_len, FrameError, HEADER_LEN};

/// Buffers a byte stream and yields complete frames.
///
/// Memory stays bounded by what the caller pushes: a length prefix is checked against the cap
/// as soon as its four bytes are buffered, and the decoder never reserves space on the
/// prefix's say-so. After an error the decoder is poisoned and keeps returning that error,
/// because the stream has lost its place and nothing after it can be trusted.
#[derive(Debug, Default)]
pub struct FrameDecoder {
    buf: Vec<u8>,
    /// Start of unconsumed bytes in `buf`; consumed bytes are dropped lazily so popping a run
    /// of small frames does not shift the buffer each time.
    start: usize,
    poisoned: Option<PoisonKind>,
}

/// A copyable record of the error that poisoned the decoder (`FrameError` holds an
/// `io::Error`, which is not `Clone`).
#[derive(Debug, Clone, Copy)]
enum PoisonKind {
    TooLarge { len: usize, max: usize },
    Empty,
}

impl PoisonKind {
    fn to_error(self) -> FrameError {
        match self {
            PoisonKind::TooLarge { len, max } => FrameError::TooLarge { len, max },
            PoisonKind::Empty => FrameError::Empty,
        }
    }
}

impl FrameDecoder {
    pub fn new() -> Self {
        Self::default()
    }

    /// Appends bytes read from the stream.
    pub fn push(&mut self, bytes: &[u8]) {
        if self.start > 0 && self.start >= self.buf.len() / 2 {
            self.buf.drain(..self.start);
            self.start = 0;
        }
        self.buf.extend_from_slice(bytes);
    }

    /// Pops the next complete frame, `Ok(None)` if more bytes are needed.
    pub fn next_frame(&mut self) -> Result<Option<Vec<u8>>, FrameError> {
        if let Some(p) = self.poisoned {
            return Err(p.to_error());
        }
        let pending = &self.buf[self.start..];
        let Some(header) = pending.first_chunk::<HEADER_LEN>() else {
            return Ok(None);
        };
        let len = u32::from_be_bytes(*header) as usize;
        if let Err(e) = check_len(len) {
            self.poisoned = match e {
                FrameError::TooLarge { len, max } => Some(PoisonKind::TooLarge { len, max }),
                _ => Some(PoisonKind::Empty),
            };
            return Err(e);
        }
        if pending.len() < HEADER_LEN + len {
            return Ok(None);
        }
        let frame = pending[HEADER_LEN..HEADER_LEN + len].to_vec();
        self.start += HEADER_LEN + len;
        if self.start == self.buf.len() {
            self.buf.clear();
            self.start = 0;
        }
        Ok(Some(frame))
    }

    /// Bytes buffered but not yet returned as a frame.
    pub fn buffered(&self) -> usize {
        self.buf.len() - self.start
    }

    /// Call at end of stream: an error if it ended inside a frame, so a torn last message is
    /// reported instead of silently dropped.
    pub fn finish(&self) -> Result<(), FrameError> {
        if let Some(p) = self.poisoned {
            return Err(p.to_error());
        }
        let pending = &self.buf[self.start..];
        match pending.first_chunk::<HEADER_LEN>() {
            None if pending.is_empty() => Ok(()),
            None => Err(FrameError::TruncatedHeader { got: pending.len() }),
            Some(header) => Err(FrameError::TruncatedPayload {
                expected: u32::from_be_bytes(*header) as usize,
                got: pending.len() - HEADER_LEN,
            }),
        }
    }
}
