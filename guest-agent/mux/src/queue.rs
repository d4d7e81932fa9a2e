//! A byte queue: appended at the back, written out from the front, compacted as it drains.

#[derive(Debug, Default)]
pub struct Queue {
    data: Vec<u8>,
    start: usize,
}

impl Queue {
    pub fn len(&self) -> usize {
        self.data.len() - self.start
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// The bytes waiting, front first.
    pub fn bytes(&self) -> &[u8] {
        &self.data[self.start..]
    }

    /// The back, to append to (frames are encoded straight into it).
    pub fn back(&mut self) -> &mut Vec<u8> {
        if self.start > 0 && self.start >= self.data.len() / 2 {
            self.data.drain(..self.start);
            self.start = 0;
        }
        &mut self.data
    }

    /// Drops `n` bytes from the front.
    pub fn consume(&mut self, n: usize) {
        self.start = self.start.saturating_add(n).min(self.data.len());
        if self.start == self.data.len() {
            self.data.clear();
            self.start = 0;
        }
    }

    pub fn clear(&mut self) {
        self.data.clear();
        self.start = 0;
    }
}

#[cfg(test)]
mod tests {
    use super::Queue;

    #[test]
    fn a_queue_keeps_order_across_compaction() {
        let mut q = Queue::default();
        let mut want = Vec::new();
        for i in 0..1000u32 {
            q.back().extend_from_slice(&i.to_le_bytes());
            want.extend_from_slice(&i.to_le_bytes());
            if i % 3 == 0 {
                let n = q.len().min(7);
                assert_eq!(&q.bytes()[..n], &want[..n]);
                q.consume(n);
                want.drain(..n);
            }
        }
        assert_eq!(q.bytes(), &want[..]);
        q.consume(usize::MAX);
        assert!(q.is_empty());
    }
}
