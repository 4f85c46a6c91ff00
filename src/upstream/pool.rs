//! Upstream session pooling (`upstream.pool_size`): a client session that ends cleanly leaves
//! its PostgreSQL session behind for the next client, after `DISCARD ALL` (see `session`).
//!
//! Rules that keep one user's state from reaching another:
//! - only a session that ended with Terminate and no extended-protocol batch open is reset;
//!   anything else closes the upstream session, as without pooling;
//! - the reset is `DISCARD ALL`, sent behind whatever the client sent before Terminate; the
//!   last answer must be exactly CommandComplete `DISCARD ALL` + ReadyForQuery `I` (PostgreSQL
//!   refuses it inside a transaction), with no error or COPY among the answers and nothing
//!   after them; none of it reaches the client;
//! - a session for which a cancel request was forwarded is never kept (the request could reach
//!   PostgreSQL after the next client has started);
//! - sessions are reused only by clients with the same forwarded startup parameters, so
//!   `RESET ALL` returns every setting to what a new session for that client would have;
//! - a kept session is checked before reuse: any byte or end-of-file waiting on it means it is
//!   not what pgveil left, and it is closed.
//!
//! Each session thread has its own pool, because a socket belongs to its thread's reactor. A
//! thread whose own pool has nothing for a client takes a plain-TCP session kept by another
//! thread and registers its socket with its own reactor (sessions move between threads as the
//! load changes, so a session may end on a thread that new clients no longer start on).

use std::sync::Mutex;
use std::time::{Duration, Instant};

use tokio::io::AsyncWriteExt;
use tokio_util::either::Either;

use super::{UpStream, UpstreamConn};
use crate::config::UpstreamConfig;

/// The startup parameters a pooled session was started with (sorted).
pub type PoolKey = Vec<(String, String)>;

/// Idle upstream sessions, one pool per session thread.
pub struct Pool {
    shards: Vec<Mutex<Vec<Idle>>>,
    per_shard: usize,
    lifetime: Duration,
    idle_timeout: Duration,
}

struct Idle {
    key: PoolKey,
    conn: UpstreamConn,
    since: Instant,
}

impl Pool {
    /// A pool for `threads` session threads: `pool_size` divided between them, rounded up.
    pub fn new(cfg: &UpstreamConfig, threads: usize) -> Pool {
        let threads = threads.max(1);
        Pool {
            shards: (0..threads).map(|_| Mutex::new(Vec::new())).collect(),
            per_shard: cfg.pool_size.div_ceil(threads),
            lifetime: Duration::from_secs(cfg.pool_lifetime_s),
            idle_timeout: Duration::from_secs(cfg.pool_idle_timeout_s),
        }
    }

    pub fn enabled(&self) -> bool {
        self.per_shard > 0
    }

    /// A kept session for `key` on thread `shard`, checked and ready, if there is one.
    pub fn take(&self, shard: usize, key: &PoolKey) -> Option<UpstreamConn> {
        let conn = match self.take_from(shard, key, false) {
            Some(conn) => conn,
            // (moving a socket needs the current thread's runtime)
            None if tokio::runtime::Handle::try_current().is_err() => return None,
            None => (0..self.shards.len())
                .filter(|&s| s != shard)
                .find_map(|s| self.take_from(s, key, true))
                .and_then(rehome)?,
        };
        if still_idle(&conn.stream) {
            Some(conn)
        } else {
            tracing::debug!("pooled upstream session was closed or not idle; dropped");
            close(conn);
            None
        }
    }

    /// The most recently kept session for `key` in `shard` (plain TCP only if `plain`);
    /// expired ones there are closed on the way.
    fn take_from(&self, shard: usize, key: &PoolKey, plain: bool) -> Option<UpstreamConn> {
        let (found, expired) = {
            let mut idle = self.shards.get(shard)?.lock().ok()?;
            let expired = self.expire(&mut idle);
            let found = idle
                .iter()
                .rposition(|i| {
                    &i.key == key && (!plain || matches!(i.conn.stream, Either::Left(_)))
                })
                .map(|pos| idle.swap_remove(pos).conn);
            (found, expired)
        };
        expired.into_iter().for_each(close);
        found
    }

    /// Keep a reset session for later (closed instead when it is too old); when the pool is
    /// full, the session idle for longest makes room.
    pub fn put(&self, shard: usize, key: PoolKey, conn: UpstreamConn) {
        let rejected = match self.shards.get(shard).and_then(|s| s.lock().ok()) {
            Some(mut idle) if conn.born.elapsed() < self.lifetime => {
                let mut out = self.expire(&mut idle);
                if idle.len() >= self.per_shard {
                    let oldest = (0..idle.len()).min_by_key(|&i| idle[i].since);
                    out.extend(oldest.map(|i| idle.swap_remove(i).conn));
                }
                idle.push(Idle {
                    key,
                    conn,
                    since: Instant::now(),
                });
                out
            }
            _ => vec![conn],
        };
        rejected.into_iter().for_each(close);
    }

    /// Close the sessions that are too old or idle for too long (run periodically).
    pub fn sweep(&self) {
        self.close_taken(|idle| self.expire(idle));
    }

    /// Close every kept session (shutdown).
    pub fn clear(&self) {
        self.close_taken(|idle| idle.drain(..).map(|i| i.conn).collect());
    }

    /// Close what `take` removes from each thread's pool (outside the locks).
    fn close_taken(&self, take: impl Fn(&mut Vec<Idle>) -> Vec<UpstreamConn>) {
        let taken: Vec<UpstreamConn> = self
            .shards
            .iter()
            .filter_map(|s| s.lock().ok())
            .flat_map(|mut idle| take(&mut idle))
            .collect();
        taken.into_iter().for_each(close);
    }

    /// How often `sweep` should run.
    pub fn sweep_interval(&self) -> Duration {
        self.idle_timeout
            .clamp(Duration::from_secs(1), Duration::from_secs(30))
    }

    /// Take out the sessions that are too old or idle for too long.
    fn expire(&self, idle: &mut Vec<Idle>) -> Vec<UpstreamConn> {
        let mut out = Vec::new();
        let mut i = 0;
        while i < idle.len() {
            let stale = idle[i].since.elapsed() >= self.idle_timeout
                || idle[i].conn.born.elapsed() >= self.lifetime;
            if stale {
                out.push(idle.swap_remove(i).conn);
            } else {
                i += 1;
            }
        }
        out
    }

    /// Number of idle sessions kept (all threads).
    pub fn idle(&self) -> usize {
        self.shards
            .iter()
            .filter_map(|s| s.lock().ok().map(|v| v.len()))
            .sum()
    }
}

/// Nothing may be waiting on an idle session: data or end-of-file means it is unusable.
fn still_idle(stream: &UpStream) -> bool {
    let tcp = match stream {
        Either::Left(tcp) => tcp,
        Either::Right(tls) => tls.get_ref().0,
    };
    let mut byte = [std::mem::MaybeUninit::<u8>::uninit(); 1];
    matches!(
        socket2::SockRef::from(tcp).peek(&mut byte),
        Err(e) if e.kind() == std::io::ErrorKind::WouldBlock
    )
}

/// A kept plain-TCP session with its socket moved to the current thread's reactor.
fn rehome(conn: UpstreamConn) -> Option<UpstreamConn> {
    conn.detach()
        .and_then(super::DetachedConn::attach)
        .map_err(|e| tracing::debug!(error = %e, "pooled upstream session not moved; dropped"))
        .ok()
}

/// End a session politely (Terminate) in the background; dropped as is outside a runtime.
fn close(conn: UpstreamConn) {
    if let Ok(rt) = tokio::runtime::Handle::try_current() {
        rt.spawn(async move {
            let mut stream = conn.stream;
            let _ = stream.write_all(&TERMINATE).await;
            let _ = stream.shutdown().await;
        });
    }
}

/// The Terminate message.
pub const TERMINATE: [u8; 5] = [b'X', 0, 0, 0, 4];

#[cfg(test)]
mod tests {
    use super::*;
    use bytes::BytesMut;
    use tokio::net::{TcpListener, TcpStream};

    /// A connected socket standing in for a PostgreSQL session (its peer kept open).
    async fn session(listener: &TcpListener, peers: &mut Vec<TcpStream>) -> UpstreamConn {
        let stream = TcpStream::connect(listener.local_addr().unwrap())
            .await
            .unwrap();
        peers.push(listener.accept().await.unwrap().0);
        UpstreamConn {
            stream: tokio_util::either::Either::Left(stream),
            params: Vec::new(),
            pid: 1,
            secret: 2,
            leftover: BytesMut::new(),
            born: Instant::now(),
        }
    }

    fn key(app: &str) -> PoolKey {
        vec![("application_name".into(), app.into())]
    }

    /// Full pool: the session idle longest makes room. Reuse only under the same key. A
    /// session whose peer closed or sent something is not handed out.
    #[tokio::test]
    async fn full_pools_evict_the_longest_idle_and_dead_sessions_are_skipped() {
        let cfg = UpstreamConfig {
            pool_size: 2,
            ..UpstreamConfig::default()
        };
        let pool = Pool::new(&cfg, 1);
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let mut peers = Vec::new();
        for app in ["a", "b", "c"] {
            let conn = session(&listener, &mut peers).await;
            pool.put(0, key(app), conn);
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
        assert_eq!(pool.idle(), 2);
        assert!(pool.take(0, &key("a")).is_none(), "the oldest was evicted");
        assert!(
            pool.take(0, &key("x")).is_none(),
            "no session for another key"
        );
        assert!(pool.take(0, &key("c")).is_some());
        // b's peer goes away: b is dropped, not handed out
        drop(peers.remove(1));
        tokio::time::sleep(Duration::from_millis(20)).await;
        assert!(pool.take(0, &key("b")).is_none());
        assert_eq!(pool.idle(), 0);
        // a peer that sends anything makes the session unusable too
        let conn = session(&listener, &mut peers).await;
        pool.put(0, key("d"), conn);
        let peer = peers.last_mut().unwrap();
        tokio::io::AsyncWriteExt::write_all(peer, b"N")
            .await
            .unwrap();
        tokio::time::sleep(Duration::from_millis(20)).await;
        assert!(pool.take(0, &key("d")).is_none());
    }
}
