//! Byte buffers given back by the thread that used them to the threads that fill them.
//!
//! A reader thread (a tracefs CPU's pages, a perf ring's batches) allocates a buffer, the
//! live consumer reads it and then frees it. Freed on another thread than the one that
//! allocated it, the memory does not return to the reader's heap at once, so the reader keeps
//! asking for fresh memory, which the kernel zeroes page by page: in `vmxray top`, a fifth of
//! the CPU time at 100k events/s. A [`BufferPool`] carries the used buffers back instead; the
//! reader refills memory that is already mapped. A pool nobody gives buffers to (the recorder,
//! which writes batches to a file and drops them) hands out new, empty vectors as before.
//!
//! ```
//! use vmxray_record::pool::BufferPool;
//!
//! let pool = BufferPool::new(4);
//! let mut page = pool.take();
//! page.resize(4096, 0);
//! pool.give(page);
//! let again = pool.take();
//! assert!(again.is_empty() && again.capacity() >= 4096);
//! ```

use std::sync::{Arc, Mutex, PoisonError};

/// A bounded stack of empty buffers shared by the threads that fill them and the one that
/// empties them (cloning shares the same pool).
#[derive(Clone, Debug)]
pub struct BufferPool {
    spare: Arc<Mutex<Vec<Vec<u8>>>>,
    /// Buffers kept at most: the rest are freed (the pool holds what is in flight between
    /// readers and consumer, not a backlog).
    max_kept: usize,
}

impl BufferPool {
    /// An empty pool that keeps at most `max_kept` buffers.
    pub fn new(max_kept: usize) -> Self {
        Self { spare: Arc::default(), max_kept }
    }

    /// An empty buffer: one given back, with its capacity, else a new one.
    pub fn take(&self) -> Vec<u8> {
        self.spare.lock().unwrap_or_else(PoisonError::into_inner).pop().unwrap_or_default()
    }

    /// A buffer of `len` zero bytes (a page to read into).
    pub fn take_zeroed(&self, len: usize) -> Vec<u8> {
        let mut buf = self.take();
        buf.resize(len, 0);
        buf
    }

    /// Gives a used buffer back (emptied here); freed when the pool is full.
    pub fn give(&self, mut buf: Vec<u8>) {
        if buf.capacity() == 0 {
            return;
        }
        buf.clear();
        let mut spare = self.spare.lock().unwrap_or_else(PoisonError::into_inner);
        if spare.len() < self.max_kept {
            spare.push(buf);
        }
    }

    /// Buffers waiting to be taken.
    pub fn len(&self) -> usize {
        self.spare.lock().unwrap_or_else(PoisonError::into_inner).len()
    }

    /// True when no buffer waits.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_given_buffer_comes_back_empty_with_its_capacity() {
        let pool = BufferPool::new(2);
        assert_eq!(pool.take().capacity(), 0);
        let mut b = Vec::with_capacity(100);
        b.extend_from_slice(&[1, 2, 3]);
        let ptr = b.as_ptr();
        pool.give(b);
        let again = pool.take();
        assert!(again.is_empty());
        assert_eq!(again.as_ptr(), ptr);
        assert!(pool.is_empty());
    }

    #[test]
    fn zeroed_buffers_hold_no_old_bytes() {
        let pool = BufferPool::new(2);
        pool.give(vec![0xff; 64]);
        assert_eq!(pool.take_zeroed(64), vec![0; 64]);
    }

    #[test]
    fn the_pool_keeps_at_most_its_bound() {
        let pool = BufferPool::new(2);
        for _ in 0..5 {
            pool.give(vec![0; 8]);
        }
        assert_eq!(pool.len(), 2);
        // A buffer without memory is not worth keeping.
        pool.take();
        pool.give(Vec::new());
        assert_eq!(pool.len(), 1);
    }
}
