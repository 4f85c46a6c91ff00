//! Session threads: one single-threaded tokio runtime per thread, and each session lives on
//! one of them at a time.
//!
//! The relay is bound by the kernel (send/receive and waking the peer), and a work-stealing
//! scheduler adds cross-thread wake-ups and context switches on top of that for every
//! round trip. With a session pinned to a thread, a thread only sleeps in its own epoll.
//!
//! How many threads are worth it depends on the load: a thread that is mostly idle sleeps
//! and is woken for almost every message (a wake-up costs more than relaying the message),
//! while a thread that is busy makes messages queue. So the threads are balanced
//! (`server.thread_busy_target`): sessions are packed onto as few threads as keep each
//! thread's CPU use under the target, and spread again when the load grows. A session moves
//! only between messages (see `session::run`); new sessions are dealt round-robin to the
//! threads in use.

use std::path::PathBuf;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, OnceLock};
use std::time::Instant;

use tokio::runtime::{Builder, Handle};
use tokio::sync::Notify;
use tokio_util::sync::CancellationToken;

/// Consecutive balancing steps that must agree before fewer threads are used (more threads
/// are taken at once: a busy thread delays every message on it).
const STEPS_TO_PACK: u32 = 3;

/// The session threads of one server; they stop when this is dropped or `stop` is called.
pub struct SessionThreads {
    handles: Vec<Handle>,
    lanes: Arc<[Lane]>,
    next: AtomicUsize,
    /// Threads in use for new sessions: 0..active.
    active: AtomicUsize,
    stop: CancellationToken,
    balance: Mutex<Balance>,
    /// Sessions moved so far.
    moved: AtomicUsize,
}

/// One session thread's side of balancing.
pub struct Lane {
    /// Sessions on this thread now.
    sessions: AtomicUsize,
    /// How many of them are asked to move, and where to.
    moves: AtomicUsize,
    to: AtomicUsize,
    notify: Notify,
    /// `/proc/<pid>/task/<tid>/schedstat` of the thread (Linux), for its CPU time.
    schedstat: OnceLock<PathBuf>,
}

/// What the balancer remembers between steps.
struct Balance {
    last: Option<(Instant, Vec<u64>)>,
    /// The thread count the last steps asked for, and how many steps in a row.
    wanted: (usize, u32),
}

impl SessionThreads {
    /// Start `count` threads (0 = one per available CPU).
    pub fn start(count: usize) -> std::io::Result<SessionThreads> {
        let count = match count {
            0 => std::thread::available_parallelism().map_or(1, std::num::NonZeroUsize::get),
            n => n,
        };
        let stop = CancellationToken::new();
        let lanes: Arc<[Lane]> = (0..count).map(|_| Lane::new()).collect();
        let mut handles = Vec::with_capacity(count);
        for i in 0..count {
            // No time driver (see `crate::timers`): sessions time out through the main runtime.
            let rt = Builder::new_current_thread().enable_io().build()?;
            handles.push(rt.handle().clone());
            let stop = stop.clone();
            let lanes = lanes.clone();
            std::thread::Builder::new()
                .name(format!("pgveil-session-{i}"))
                .spawn(move || {
                    // where the balancer reads this thread's CPU time (until set: no balancing)
                    if let Some(path) = schedstat_path() {
                        let _ = lanes[i].schedstat.set(path);
                    }
                    drop(lanes);
                    // Dropping the runtime here ends whatever sessions are still open.
                    rt.block_on(stop.cancelled());
                })?;
        }
        let threads = SessionThreads {
            handles,
            lanes,
            next: AtomicUsize::new(0),
            active: AtomicUsize::new(count),
            stop,
            balance: Mutex::new(Balance {
                last: None,
                wanted: (count, 0),
            }),
            moved: AtomicUsize::new(0),
        };
        Ok(threads)
    }

    /// The thread the next session goes to (one of those in use), with its index.
    pub fn next(&self) -> (usize, &Handle) {
        let active = self
            .active
            .load(Ordering::Relaxed)
            .clamp(1, self.handles.len());
        let i = self.next.fetch_add(1, Ordering::Relaxed) % active;
        (i, &self.handles[i])
    }

    /// Number of threads.
    pub fn len(&self) -> usize {
        self.handles.len()
    }

    pub fn handle(&self, i: usize) -> &Handle {
        &self.handles[i % self.handles.len()]
    }

    pub fn lane(&self, i: usize) -> &Lane {
        &self.lanes[i % self.lanes.len()]
    }

    /// Sessions on each thread now.
    pub fn sessions(&self) -> Vec<usize> {
        self.lanes.iter().map(Lane::sessions).collect()
    }

    /// Sessions moved between threads so far.
    pub fn moved(&self) -> usize {
        self.moved.load(Ordering::Relaxed)
    }

    pub(super) fn count_move(&self) {
        self.moved.fetch_add(1, Ordering::Relaxed);
    }

    /// Ask up to `n` sessions on thread `from` to move to thread `to` (they go when both of
    /// their pumps next wait for input; sessions that cannot move stay).
    pub fn request_moves(&self, from: usize, to: usize, n: usize) {
        let lane = self.lane(from);
        lane.to.store(to % self.handles.len(), Ordering::Relaxed);
        lane.moves.store(n, Ordering::Release);
        lane.notify.notify_waiters();
    }

    /// One balancing step: from each thread's CPU time since the last step, the number of
    /// threads that keeps each under `target` (a share of one CPU), and the moves to get
    /// there. Needs each thread's CPU time (Linux); elsewhere nothing moves.
    pub fn rebalance(&self, target: f64) {
        let Some(cpu) = self
            .lanes
            .iter()
            .map(Lane::cpu_ns)
            .collect::<Option<Vec<_>>>()
        else {
            return;
        };
        let now = Instant::now();
        let Ok(mut balance) = self.balance.lock() else {
            return;
        };
        let Some((then, before)) = balance.last.replace((now, cpu.clone())) else {
            return;
        };
        let wall = now.duration_since(then).as_nanos() as f64;
        if wall <= 0.0 {
            return;
        }
        let used: f64 = cpu
            .iter()
            .zip(&before)
            .map(|(a, b)| a.saturating_sub(*b) as f64 / wall)
            .sum();
        let sessions: Vec<usize> = self.lanes.iter().map(Lane::sessions).collect();
        let want = threads_wanted(used, target, sessions.iter().sum(), self.handles.len());
        balance.wanted = match balance.wanted {
            (w, n) if w == want => (w, n.saturating_add(1)),
            _ => (want, 1),
        };
        let active = self.active.load(Ordering::Relaxed);
        if want < active && balance.wanted.1 < STEPS_TO_PACK {
            return;
        }
        drop(balance);
        if self.active.swap(want, Ordering::Relaxed) != want {
            tracing::debug!(threads = want, cpu = used, "session threads in use");
        }
        let moves = plan_moves(&sessions, want);
        for (i, lane) in self.lanes.iter().enumerate() {
            match moves.iter().find(|m| m.0 == i) {
                Some(&(from, to, n)) => self.request_moves(from, to, n),
                None => lane.moves.store(0, Ordering::Release), // no stale requests
            }
        }
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

impl Lane {
    fn new() -> Lane {
        Lane {
            sessions: AtomicUsize::new(0),
            moves: AtomicUsize::new(0),
            to: AtomicUsize::new(0),
            notify: Notify::new(),
            schedstat: OnceLock::new(),
        }
    }

    fn sessions(&self) -> usize {
        self.sessions.load(Ordering::Relaxed)
    }

    /// A session starts running on this thread.
    pub fn enter(&self) {
        self.sessions.fetch_add(1, Ordering::Relaxed);
    }

    /// A session stops running on this thread (ended or moved away).
    pub fn leave(&self) {
        let _ = self
            .sessions
            .fetch_update(Ordering::Relaxed, Ordering::Relaxed, |n| n.checked_sub(1));
    }

    /// Resolves with the thread to move to once a move is asked for this thread and
    /// `movable()` holds when it is asked (or at a later request).
    pub async fn wait_for_move(&self, movable: impl Fn() -> bool) -> usize {
        loop {
            let notified = self.notify.notified();
            tokio::pin!(notified);
            notified.as_mut().enable(); // registered before checking: no request is missed
            if movable() && self.take_move() {
                return self.to.load(Ordering::Relaxed);
            }
            notified.await;
        }
    }

    fn take_move(&self) -> bool {
        self.moves
            .fetch_update(Ordering::AcqRel, Ordering::Acquire, |n| n.checked_sub(1))
            .is_ok()
    }

    /// CPU time of the thread so far, in nanoseconds.
    fn cpu_ns(&self) -> Option<u64> {
        let text = std::fs::read_to_string(self.schedstat.get()?).ok()?;
        text.split_whitespace().next()?.parse().ok()
    }
}

/// Where this thread's scheduler statistics are (`/proc/<pid>/task/<tid>/schedstat`).
fn schedstat_path() -> Option<PathBuf> {
    let me = std::fs::read_link("/proc/thread-self").ok()?;
    let path = PathBuf::from("/proc").join(me).join("schedstat");
    path.exists().then_some(path)
}

/// Threads to use: enough that each stays under `target` of one CPU at the measured total
/// use, at least one, at most one per session and `threads`.
fn threads_wanted(used: f64, target: f64, sessions: usize, threads: usize) -> usize {
    let by_load = if target > 0.0 {
        (used / target).ceil() as usize
    } else {
        threads
    };
    by_load.min(sessions).clamp(1, threads)
}

/// Moves that bring `sessions` (per thread) onto threads `0..active`, evenly: every session
/// on a thread past `active` moves, and a thread in use with more than its share gives the
/// surplus to the one with the fewest. At most one destination per thread and step.
fn plan_moves(sessions: &[usize], active: usize) -> Vec<(usize, usize, usize)> {
    let mut count = sessions.to_vec();
    let total: usize = count.iter().sum();
    let share = total.div_ceil(active.max(1));
    let mut moves = Vec::new();
    for from in 0..count.len() {
        let keep = if from < active { share } else { 0 };
        if count[from] <= keep {
            continue;
        }
        let Some(to) = (0..active).filter(|&t| t != from).min_by_key(|&t| count[t]) else {
            continue;
        };
        let room = if from < active {
            share.saturating_sub(count[to])
        } else {
            usize::MAX
        };
        let n = (count[from] - keep).min(room);
        if n > 0 {
            count[from] -= n;
            count[to] += n;
            moves.push((from, to, n));
        }
    }
    moves
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn thread_count_follows_the_load() {
        assert_eq!(threads_wanted(0.37, 0.45, 16, 2), 1);
        assert_eq!(threads_wanted(0.57, 0.45, 16, 2), 2);
        assert_eq!(threads_wanted(3.0, 0.45, 16, 4), 4);
        assert_eq!(threads_wanted(3.0, 0.45, 2, 4), 2); // a session cannot be split
        assert_eq!(threads_wanted(0.0, 0.45, 0, 4), 1);
        assert_eq!(threads_wanted(0.1, 0.0, 16, 4), 4); // balancing off: all threads
    }

    #[test]
    fn moves_pack_and_spread_evenly() {
        // pack two threads onto one
        assert_eq!(plan_moves(&[8, 8], 1), vec![(1, 0, 8)]);
        // spread one onto two
        assert_eq!(plan_moves(&[16, 0], 2), vec![(0, 1, 8)]);
        // already even: nothing
        assert!(plan_moves(&[8, 8], 2).is_empty());
        assert!(plan_moves(&[9, 8], 2).is_empty());
        // four threads down to two
        assert_eq!(plan_moves(&[4, 4, 4, 4], 2), vec![(2, 0, 4), (3, 1, 4)]);
    }
}
