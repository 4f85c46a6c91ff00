//! Timers for the session threads, whose runtimes have no time driver: a time driver costs
//! every wake-up a clock read and a look at the timer wheel, and a session thread wakes up
//! twice per relayed query. The few timeouts sessions need (handshake, upstream connect,
//! cancel, reset) run on the runtime that made the [`Timers`] (the main one, which has a
//! time driver); a timer that is no longer awaited is cancelled.

use std::future::Future;
use std::time::Duration;

use tokio::runtime::Handle;
use tokio_util::task::AbortOnDropHandle;

/// Where sleeps run: the runtime current when this was made, or (made outside any runtime)
/// the caller's own.
#[derive(Clone, Debug)]
pub struct Timers(Option<Handle>);

/// A timeout elapsed.
#[derive(Debug, PartialEq, Eq)]
pub struct Elapsed;

impl Timers {
    /// Timers on the current runtime (which must have a time driver), if there is one.
    pub fn current() -> Timers {
        Timers(Handle::try_current().ok())
    }

    /// Sleep for `d`. If the timer runtime is gone (shutdown), this returns at once.
    pub async fn sleep(&self, d: Duration) {
        match &self.0 {
            Some(handle) => {
                // (the sleep is made inside the task: making it here would need a time driver)
                let task = handle.spawn(async move { tokio::time::sleep(d).await });
                let _ = AbortOnDropHandle::new(task).await;
            }
            None => tokio::time::sleep(d).await,
        }
    }

    /// `f`, unless `d` passes first.
    pub async fn timeout<F: Future>(&self, d: Duration, f: F) -> Result<F::Output, Elapsed> {
        tokio::select! {
            biased;
            out = f => Ok(out),
            () = self.sleep(d) => Err(Elapsed),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A runtime without a time driver can time out through timers made on one with it.
    #[test]
    fn timeouts_work_on_a_runtime_without_timers() {
        let main = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(1)
            .enable_all()
            .build()
            .unwrap();
        let timers = main.block_on(async { Timers::current() });
        let io_only = tokio::runtime::Builder::new_current_thread()
            .enable_io()
            .build()
            .unwrap();
        io_only.block_on(async {
            let slow = std::future::pending::<()>();
            assert_eq!(
                timers.timeout(Duration::from_millis(20), slow).await,
                Err(Elapsed)
            );
            assert_eq!(
                timers.timeout(Duration::from_secs(60), async { 7 }).await,
                Ok(7)
            );
            timers.sleep(Duration::from_millis(5)).await;
        });
    }
}
