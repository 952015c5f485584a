//! Jobs run ahead on the rayon pool, their results taken in submission order.
//!
//! Every parallel stage of the readers has the same shape: a sequential consumer (the merge of
//! CPU streams, the ordered replay of text lines, the writer of `vmxray dump`) needs the results
//! of independent units of work (a chunk's pages, a block of lines, a batch of lines to format)
//! in order, and memory must stay bounded by the number of units in flight, not by the input.
//!
//! ```text
//!   push(job 0) push(job 1) push(job 2)       <- at most `ahead` queued, each a rayon job
//!        |           |           |
//!      [slot]      [slot]      [slot]         <- Pending -> Running -> Done(result)
//!        |
//!   pop() -> result 0   (waits if running; runs it inline if no worker has claimed it yet)
//! ```
//!
//! A job *claims* its slot when it starts. When the consumer needs a result whose job has not
//! started (the pool is busy with other work, or is the consumer itself), it claims the slot and
//! runs the job on its own thread, so a saturated pool can never deadlock the consumer.

use std::collections::VecDeque;
use std::sync::{Arc, Condvar, Mutex, MutexGuard};

/// A unit of work producing a `T`.
pub(crate) type Job<T> = Box<dyn FnOnce() -> T + Send>;

enum State<T> {
    Pending(Job<T>),
    Running,
    Done(T),
    Taken,
}

struct Slot<T> {
    state: Mutex<State<T>>,
    done: Condvar,
}

impl<T> Slot<T> {
    fn lock(&self) -> MutexGuard<'_, State<T>> {
        // A panic inside a job would poison the lock; the state is still consistent.
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Runs the job if nobody has claimed it yet.
    fn run_if_pending(&self) {
        let job = {
            let mut st = self.lock();
            match std::mem::replace(&mut *st, State::Running) {
                State::Pending(job) => job,
                other => {
                    *st = other;
                    return;
                }
            }
        };
        let out = job();
        *self.lock() = State::Done(out);
        self.done.notify_all();
    }

    /// The result: taken if done, awaited if running, else computed here. `None` only if it
    /// was taken before (never, through [`Ordered`]).
    fn take(&self) -> Option<T> {
        loop {
            {
                let mut st = self.lock();
                loop {
                    match std::mem::replace(&mut *st, State::Taken) {
                        State::Done(out) => return Some(out),
                        State::Running => {
                            *st = State::Running;
                            st = self.done.wait(st).unwrap_or_else(|e| e.into_inner());
                        }
                        State::Taken => return None,
                        pending @ State::Pending(_) => {
                            *st = pending;
                            break;
                        }
                    }
                }
            }
            self.run_if_pending();
        }
    }
}

/// Jobs in flight, results in submission order. With `parallel` off every job runs on the
/// consumer's thread when its result is popped (the same results, one thread).
pub(crate) struct Ordered<T> {
    slots: VecDeque<Arc<Slot<T>>>,
    parallel: bool,
}

impl<T: Send + 'static> Ordered<T> {
    /// An empty queue; `parallel` runs jobs on the rayon pool as they are pushed.
    pub(crate) fn new(parallel: bool) -> Self {
        Self { slots: VecDeque::new(), parallel }
    }

    /// Queues a job (started on the pool at once when parallel).
    pub(crate) fn push(&mut self, job: Job<T>) {
        let slot = Arc::new(Slot { state: Mutex::new(State::Pending(job)), done: Condvar::new() });
        if self.parallel {
            let s = Arc::clone(&slot);
            rayon::spawn(move || s.run_if_pending());
        }
        self.slots.push_back(slot);
    }

    /// Jobs queued and not yet popped.
    pub(crate) fn len(&self) -> usize {
        self.slots.len()
    }

    /// The oldest job's result, waiting for it (or running it here); `None` when empty.
    pub(crate) fn pop(&mut self) -> Option<T> {
        loop {
            let slot = self.slots.pop_front()?;
            if let Some(out) = slot.take() {
                return Some(out);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn results_come_in_submission_order_whatever_the_finishing_order() {
        for parallel in [false, true] {
            let mut q = Ordered::new(parallel);
            for i in 0..32u64 {
                // Earlier jobs sleep longer, so they finish last on the pool.
                q.push(Box::new(move || {
                    std::thread::sleep(std::time::Duration::from_micros((32 - i) * 50));
                    i * i
                }));
            }
            assert_eq!(q.len(), 32);
            let got: Vec<u64> = std::iter::from_fn(|| q.pop()).collect();
            assert_eq!(got, (0..32u64).map(|i| i * i).collect::<Vec<_>>());
            assert_eq!(q.len(), 0);
        }
    }

    #[test]
    fn a_busy_pool_cannot_block_the_consumer() {
        // Occupy every pool thread until the consumer has its results: the consumer must run
        // the queued jobs itself.
        let threads = rayon::current_num_threads();
        let (release_tx, release_rx) = std::sync::mpsc::channel::<()>();
        let release_rx = Arc::new(Mutex::new(release_rx));
        let (started_tx, started_rx) = std::sync::mpsc::channel::<()>();
        for _ in 0..threads {
            let rx = Arc::clone(&release_rx);
            let started = started_tx.clone();
            rayon::spawn(move || {
                let _ = started.send(());
                let _ = rx.lock().map(|rx| rx.recv());
            });
        }
        for _ in 0..threads {
            started_rx.recv().unwrap();
        }
        let mut q = Ordered::new(true);
        for i in 0..4 {
            q.push(Box::new(move || i + 1));
        }
        let got: Vec<i32> = std::iter::from_fn(|| q.pop()).collect();
        assert_eq!(got, vec![1, 2, 3, 4]);
        for _ in 0..threads {
            release_tx.send(()).unwrap();
        }
    }
}
