//! Session threads: one single-threaded tokio runtime per thread, and each session lives on
//! one of them from start to end.
//!
//! The relay is bound by the kernel (send/receive and waking the peer), and a work-stealing
//! scheduler adds cross-thread wake-ups and context switches on top of that for every
//! round trip. With a session pinned to a thread, a thread only sleeps in its own epoll.
//! Sessions are dealt out round-robin.

use std::sync::atomic::{AtomicUsize, Ordering};

use tokio::runtime::{Builder, Handle};
use tokio_util::sync::CancellationToken;

/// The session threads of one server; they stop when this is dropped or `stop` is called.
pub struct SessionThreads {
    handles: Vec<Handle>,
    next: AtomicUsize,
    stop: CancellationToken,
}

impl SessionThreads {
    /// Start `count` threads (0 = one per available CPU).
    pub fn start(count: usize) -> std::io::Result<SessionThreads> {
        let count = match count {
            0 => std::thread::available_parallelism().map_or(1, std::num::NonZeroUsize::get),
            n => n,
        };
        let stop = CancellationToken::new();
        let mut handles = Vec::with_capacity(count);
        for i in 0..count {
            let rt = Builder::new_current_thread().enable_all().build()?;
            handles.push(rt.handle().clone());
            let stop = stop.clone();
            std::thread::Builder::new()
                .name(format!("pgveil-session-{i}"))
                // Dropping the runtime here ends whatever sessions are still open.
                .spawn(move || rt.block_on(stop.cancelled()))?;
        }
        Ok(SessionThreads {
            handles,
            next: AtomicUsize::new(0),
            stop,
        })
    }

    /// The thread the next session goes to, with its index.
    pub fn next(&self) -> (usize, &Handle) {
        let i = self.next.fetch_add(1, Ordering::Relaxed) % self.handles.len();
        (i, &self.handles[i])
    }

    /// Number of threads.
    pub fn len(&self) -> usize {
        self.handles.len()
    }

    /// Stop all threads; sessions still running on them are closed.
    pub fn stop(&self) {
        self.stop.cancel();
    }
}

impl Drop for SessionThreads {
    fn drop(&mut self) {
        self.stop.cancel();
    }
}
