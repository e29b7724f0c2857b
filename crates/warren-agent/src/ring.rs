//! The bounded output history of one process.
//!
//! Stdout and stderr share one ring, in the order they were read, so a replay interleaves
//! them as a live client saw them. Positions are absolute byte offsets since the process
//! started; a reader holds a position and the ring answers "what comes after it".
//!
//! Memory is counted as the bytes plus a fixed overhead per chunk, so a process that
//! alternates one-byte writes to stdout and stderr cannot make the bookkeeping outgrow the
//! budget. Eviction drops the oldest bytes, but never bytes at or after a `keep` offset:
//! the caller passes the slowest lossless reader's position, and asks [`Ring::has_room`]
//! before reading more, so a lossless reader never misses data.

use std::collections::VecDeque;

use warren_types::proto::CHUNK;

/// Which output a chunk came from.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Stream {
    Stdout,
    Stderr,
}

/// Bookkeeping charged per chunk (the Vec header and deque slot, rounded up).
const CHUNK_OVERHEAD: usize = 64;

#[derive(Debug)]
struct Chunk {
    offset: u64,
    stream: Stream,
    data: Vec<u8>,
}

impl Chunk {
    fn end(&self) -> u64 {
        self.offset + self.data.len() as u64
    }
}

#[derive(Debug)]
pub(crate) struct Ring {
    chunks: VecDeque<Chunk>,
    start: u64,
    end: u64,
    cost: usize,
    capacity: usize,
}

impl Ring {
    /// A ring holding at most about `capacity` bytes; raised to fit two full reads, the
    /// least with which a lossless reader and a pump can both make progress.
    pub(crate) fn new(capacity: usize) -> Self {
        Self {
            chunks: VecDeque::new(),
            start: 0,
            end: 0,
            cost: 0,
            capacity: capacity.max(2 * (CHUNK + CHUNK_OVERHEAD)),
        }
    }

    /// The offset of the oldest byte still held.
    pub(crate) fn start(&self) -> u64 {
        self.start
    }

    /// The offset just past the newest byte.
    pub(crate) fn end(&self) -> u64 {
        self.end
    }

    /// Whether one more read of up to [`CHUNK`] bytes fits without evicting anything at or
    /// after `keep`.
    pub(crate) fn has_room(&self, keep: Option<u64>) -> bool {
        let Some(keep) = keep else { return true };
        let first = self.chunks.partition_point(|c| c.end() <= keep);
        let pinned = (self.end - keep) as usize + (self.chunks.len() - first) * CHUNK_OVERHEAD;
        pinned + CHUNK + CHUNK_OVERHEAD <= self.capacity
    }

    /// Appends `data`, then evicts old bytes (none at or after `keep`) to get back under
    /// the budget.
    pub(crate) fn push(&mut self, stream: Stream, data: &[u8], keep: Option<u64>) {
        if data.is_empty() {
            return;
        }
        match self.chunks.back_mut() {
            Some(last) if last.stream == stream && last.data.len() + data.len() <= CHUNK => {
                last.data.extend_from_slice(data);
            }
            _ => {
                self.chunks.push_back(Chunk {
                    offset: self.end,
                    stream,
                    data: data.to_vec(),
                });
                self.cost += CHUNK_OVERHEAD;
            }
        }
        self.cost += data.len();
        self.end += data.len() as u64;
        self.evict(keep.unwrap_or(self.end));
    }

    fn evict(&mut self, keep: u64) {
        while self.cost > self.capacity {
            let Some(front) = self.chunks.front_mut() else {
                break;
            };
            let evictable = keep
                .saturating_sub(front.offset)
                .min(front.data.len() as u64) as usize;
            if evictable == 0 {
                break;
            }
            let excess = self.cost - self.capacity;
            let len = front.data.len();
            if evictable == len && excess >= len {
                self.chunks.pop_front();
                self.cost -= len + CHUNK_OVERHEAD;
                self.start += len as u64;
            } else {
                // Only part of this chunk has to go (or may go): keep the rest of its
                // history rather than dropping it whole.
                let n = excess.min(evictable);
                front.data.drain(..n);
                front.offset += n as u64;
                self.cost -= n;
                self.start += n as u64;
            }
        }
    }

    /// Up to `max` bytes of one stream from `pos` (or from the oldest byte held, if `pos`
    /// was evicted), with the offset they start at. `None` when nothing is newer.
    pub(crate) fn read(&self, pos: u64, max: usize) -> Option<(u64, Stream, &[u8])> {
        let pos = pos.max(self.start);
        if pos >= self.end || max == 0 {
            return None;
        }
        let i = self.chunks.partition_point(|c| c.end() <= pos);
        let chunk = self.chunks.get(i)?;
        let from = (pos - chunk.offset) as usize;
        let to = chunk.data.len().min(from.saturating_add(max));
        Some((pos, chunk.stream, &chunk.data[from..to]))
    }

    /// Where the bytes from `pos` start, their stream, and how many of that stream follow
    /// without a change of stream, up to `max`: [`Ring::read`] across chunks.
    pub(crate) fn run(&self, pos: u64, max: usize) -> Option<(u64, Stream, usize)> {
        let mut len = 0;
        let (at, stream) = self.walk_run(pos, max, |data| len += data.len())?;
        Some((at, stream, len))
    }

    /// The bytes of [`Ring::run`], copied out in one piece.
    pub(crate) fn read_run(&self, pos: u64, max: usize) -> Option<(u64, Stream, Vec<u8>)> {
        let held = self.end.saturating_sub(pos.max(self.start));
        let mut out = Vec::with_capacity(usize::try_from(held).map_or(max, |h| h.min(max)));
        let (at, stream) = self.walk_run(pos, max, |data| out.extend_from_slice(data))?;
        Some((at, stream, out))
    }

    /// Hands `visit` each piece of the run from `pos` (see [`Ring::run`]) in order.
    fn walk_run(
        &self,
        pos: u64,
        max: usize,
        mut visit: impl FnMut(&[u8]),
    ) -> Option<(u64, Stream)> {
        let (at, stream, first) = self.read(pos, max)?;
        let mut len = first.len();
        visit(first);
        while len < max {
            match self.read(at + len as u64, max - len) {
                Some((_, s, data)) if s == stream => {
                    len += data.len();
                    visit(data);
                }
                _ => break,
            }
        }
        Some((at, stream))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn drain(ring: &Ring, mut pos: u64) -> Vec<(Stream, Vec<u8>)> {
        let mut out: Vec<(Stream, Vec<u8>)> = Vec::new();
        while let Some((at, stream, data)) = ring.read(pos, 7) {
            pos = at + data.len() as u64;
            match out.last_mut() {
                Some((s, d)) if *s == stream => d.extend_from_slice(data),
                _ => out.push((stream, data.to_vec())),
            }
        }
        out
    }

    #[test]
    fn a_run_joins_the_chunks_of_one_stream_and_stops_at_the_other() {
        let mut r = Ring::new(8 * CHUNK);
        let block = vec![1u8; CHUNK];
        for _ in 0..3 {
            r.push(Stream::Stdout, &block, None);
        }
        r.push(Stream::Stderr, b"err", None);
        r.push(Stream::Stdout, b"tail", None);
        assert_eq!(r.chunks.len(), 5, "a full chunk is not grown");
        let (at, stream, data) = r.read_run(10, usize::MAX).unwrap();
        assert_eq!(
            (at, stream, data.len()),
            (10, Stream::Stdout, 3 * CHUNK - 10)
        );
        assert!(data.iter().all(|b| *b == 1));
        assert_eq!(r.run(10, CHUNK + 5), Some((10, Stream::Stdout, CHUNK + 5)));
        let end = 3 * CHUNK as u64;
        assert_eq!(
            r.read_run(end, 100),
            Some((end, Stream::Stderr, b"err".to_vec()))
        );
        assert_eq!(
            r.read_run(end + 3, 100),
            Some((end + 3, Stream::Stdout, b"tail".to_vec()))
        );
        assert_eq!(r.read_run(end + 7, 100), None);
    }

    #[test]
    fn interleaves_streams_in_order() {
        let mut r = Ring::new(0);
        r.push(Stream::Stdout, b"ab", None);
        r.push(Stream::Stderr, b"X", None);
        r.push(Stream::Stdout, b"cd", None);
        assert_eq!(
            drain(&r, 0),
            vec![
                (Stream::Stdout, b"ab".to_vec()),
                (Stream::Stderr, b"X".to_vec()),
                (Stream::Stdout, b"cd".to_vec())
            ]
        );
        assert_eq!(drain(&r, 3), vec![(Stream::Stdout, b"cd".to_vec())]);
    }

    #[test]
    fn evicts_oldest_but_never_past_keep() {
        let mut r = Ring::new(0);
        let cap = r.capacity;
        let block = vec![7u8; 1000];
        for _ in 0..(3 * cap / 1000) {
            r.push(Stream::Stdout, &block, None);
        }
        assert!(r.cost <= cap);
        assert!(r.start() > 0);
        assert_eq!(
            r.end() - r.start(),
            r.chunks.iter().map(|c| c.data.len() as u64).sum::<u64>()
        );
        // A reader pinned at the start of what is held keeps it all, however much is pushed.
        let keep = r.start();
        for _ in 0..10 {
            r.push(Stream::Stderr, &block, Some(keep));
        }
        assert_eq!(r.start(), keep);
        assert!(!r.has_room(Some(keep)));
        assert!(r.has_room(Some(r.end())));
        assert!(r.has_room(None));
    }

    #[test]
    fn tiny_alternating_writes_stay_within_budget() {
        let mut r = Ring::new(0);
        for i in 0..200_000u32 {
            let s = if i % 2 == 0 {
                Stream::Stdout
            } else {
                Stream::Stderr
            };
            r.push(s, b"x", None);
        }
        assert!(r.cost <= r.capacity);
        assert!(r.chunks.len() * CHUNK_OVERHEAD <= r.capacity);
    }
}
