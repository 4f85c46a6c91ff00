//! The running proxy: shared state, accept loop, connection limit, cancel routing and
//! graceful shutdown. One `Server` per process (or per test), no globals.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use pgwire::api::auth::sasl::scram::ScramAuth;
use pgwire::messages::startup::SecretKey;
use pgwire::tokio::tokio_rustls::rustls;
use pgwire::tokio::TlsAcceptor;
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::Semaphore;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;
use tracing::Instrument;

use crate::config::Config;
use crate::error::ClientError;
use crate::front::auth::CatalogAuth;
use crate::front::startup::{handshake, Handshake};
use crate::policy::PolicyStore;
use crate::session::{Detached, Outcome, Session};
use crate::sql::RewriteCache;
use crate::timers::Timers;
use crate::upstream::pool::{Pool, PoolKey};
use crate::upstream::{UpstreamConn, UpstreamError, UpstreamTarget};
pub use threads::Lane;
use threads::SessionThreads;

mod threads;

/// After the grace period, how long sessions get to tell their clients that pgveil stops.
const STOP_WAIT: Duration = Duration::from_secs(1);

/// How often session threads are balanced (`server.thread_busy_target`).
const BALANCE_EVERY: Duration = Duration::from_millis(250);

/// Start-up failures.
#[derive(Debug, thiserror::Error)]
pub enum ServeError {
    #[error("cannot listen on {0}: {1}")]
    Bind(String, std::io::Error),
    #[error("TLS configuration: {0}")]
    Tls(String),
    #[error("upstream configuration: {0}")]
    Upstream(#[from] crate::upstream::UpstreamError),
    #[error("policy catalog: {0}")]
    Catalog(String),
    #[error("cannot start session threads: {0}")]
    Threads(std::io::Error),
}

/// Key of the cancel map: the (pid, secret) pgveil gave the client.
type ClientKey = (i32, Vec<u8>);

fn key_bytes(k: &SecretKey) -> Vec<u8> {
    match k {
        SecretKey::I32(i) => i.to_be_bytes().to_vec(),
        SecretKey::Bytes(b) => b.to_vec(),
    }
}

/// Where a client's cancel key leads.
struct CancelTarget {
    pid: i32,
    secret: i32,
    /// A cancel request was sent for this session.
    forwarded: bool,
}

/// Shared state of one pgveil instance.
pub struct Server {
    pub config: Config,
    pub store: Arc<PolicyStore>,
    pub upstream: UpstreamTarget,
    pub tls_acceptor: Option<TlsAcceptor>,
    pub scram_plain: ScramAuth<String>,
    pub scram_tls: ScramAuth<String>,
    pub rewrites: RewriteCache,
    sessions: Arc<Semaphore>,
    cancel_map: Mutex<HashMap<ClientKey, CancelTarget>>,
    /// Idle upstream sessions for reuse (`upstream.pool_size`).
    pub pool: Pool,
    /// SIGTERM (or `Running::shutdown`): no new connections, sessions may finish.
    pub shutdown: CancellationToken,
    /// The grace period is over: sessions still open end now (57P01 to the client).
    pub stopping: CancellationToken,
    tracker: TaskTracker,
    threads: SessionThreads,
    /// Timeouts for the session threads, which have no time driver (`crate::timers`).
    pub timers: Timers,
}

impl Server {
    /// Build the shared state (TLS material is loaded here).
    pub fn new(config: Config, store: Arc<PolicyStore>) -> Result<Arc<Server>, ServeError> {
        let (tls_acceptor, cert_pem) = match &config.tls {
            Some(t) => {
                let (acc, pem) = load_tls(&t.cert, &t.key)?;
                (Some(acc), Some(pem))
            }
            None => (None, None),
        };
        let auth = Arc::new(CatalogAuth::new(store.clone()));
        let scram_plain = ScramAuth::new(auth.clone());
        let mut scram_tls = ScramAuth::new(auth);
        if let Some(pem) = cert_pem {
            scram_tls
                .configure_certificate(&pem)
                .map_err(|e| ServeError::Tls(e.to_string()))?;
        }
        let upstream = UpstreamTarget::from_config(&config)?;
        let rewrites = RewriteCache::new(config.catalog.rewrite_cache_capacity);
        let threads =
            SessionThreads::start(config.server.session_threads).map_err(ServeError::Threads)?;
        let pool = Pool::new(&config.upstream, threads.len());
        Ok(Arc::new(Server {
            sessions: Arc::new(Semaphore::new(config.server.max_connections)),
            config,
            store,
            upstream,
            tls_acceptor,
            scram_plain,
            scram_tls,
            rewrites,
            cancel_map: Mutex::new(HashMap::new()),
            pool,
            shutdown: CancellationToken::new(),
            stopping: CancellationToken::new(),
            tracker: TaskTracker::new(),
            threads,
            timers: Timers::current(),
        }))
    }

    pub fn require_tls(&self) -> bool {
        self.config.tls.as_ref().is_some_and(|t| t.require_tls)
    }

    /// The pinned search_path as a setting value.
    pub fn search_path_setting(&self) -> String {
        let quote = |s: &String| {
            let plain = s
                .chars()
                .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '_')
                && !s.starts_with(|c: char| c.is_ascii_digit());
            if plain {
                s.clone()
            } else {
                format!("\"{}\"", s.replace('"', "\"\""))
            }
        };
        self.config
            .server
            .search_path
            .iter()
            .map(quote)
            .collect::<Vec<_>>()
            .join(", ")
    }

    /// A PostgreSQL session for a client with these startup parameters: a pooled one if one
    /// is kept for them on this thread, else a new one.
    pub async fn upstream_session(
        &self,
        shard: usize,
        key: &PoolKey,
    ) -> Result<UpstreamConn, UpstreamError> {
        match self.pool.take(shard, key) {
            Some(conn) => Ok(conn),
            None => {
                let database = &self.config.upstream.database;
                self.upstream.connect(database, key).await
            }
        }
    }

    /// Number of sessions currently open.
    pub fn active_sessions(&self) -> usize {
        self.config.server.max_connections - self.sessions.available_permits()
    }

    fn register_cancel(&self, client: &(i32, SecretKey), upstream: (i32, i32)) {
        if let Ok(mut m) = self.cancel_map.lock() {
            let target = CancelTarget {
                pid: upstream.0,
                secret: upstream.1,
                forwarded: false,
            };
            m.insert((client.0, key_bytes(&client.1)), target);
        }
    }

    /// Forget a session's cancel key; true if a cancel request was forwarded for it (or that
    /// cannot be known), so its upstream session must not be reused.
    fn unregister_cancel(&self, client: &(i32, SecretKey)) -> bool {
        match self.cancel_map.lock() {
            Ok(mut m) => m
                .remove(&(client.0, key_bytes(&client.1)))
                .is_none_or(|t| t.forwarded),
            Err(_) => true,
        }
    }

    async fn cancel(&self, pid: i32, secret: &SecretKey) {
        // marked under the lock, before sending: the session's end sees it (see unregister)
        let target = self.cancel_map.lock().ok().and_then(|mut m| {
            let t = m.get_mut(&(pid, key_bytes(secret)))?;
            t.forwarded = true;
            Some((t.pid, t.secret))
        });
        if let Some((up_pid, up_secret)) = target {
            if let Err(e) = self.upstream.cancel(up_pid, up_secret).await {
                tracing::warn!(error = %e, "forwarding cancel request failed");
            }
        }
    }

    /// Accept connections until shutdown; then wait up to the grace period (or until
    /// `stopping`) for sessions, and end those still open.
    pub async fn run(self: Arc<Self>, listener: TcpListener) {
        loop {
            tokio::select! {
                _ = self.shutdown.cancelled() => break,
                accepted = listener.accept() => match accepted {
                    Ok((tcp, addr)) => self.clone().spawn_connection(tcp, addr),
                    Err(e) => {
                        tracing::warn!(error = %e, "accept failed");
                        tokio::time::sleep(Duration::from_millis(50)).await;
                    }
                },
            }
        }
        drop(listener);
        self.tracker.close();
        let grace = Duration::from_millis(self.config.server.shutdown_grace_ms);
        let all_ended = tokio::select! {
            ended = tokio::time::timeout(grace, self.tracker.wait()) => ended.is_ok(),
            () = self.stopping.cancelled() => false, // told not to wait (a second signal)
        };
        if !all_ended {
            tracing::warn!(open = self.active_sessions(), "closing remaining sessions");
            // they say why to their clients, then the threads stop (ending any stragglers:
            // handshakes, sessions stuck writing to a client that does not read)
            self.stopping.cancel();
            let _ = tokio::time::timeout(STOP_WAIT, self.tracker.wait()).await;
        }
        self.threads.stop();
    }

    fn spawn_connection(self: Arc<Self>, tcp: TcpStream, addr: SocketAddr) {
        if let Err(e) = crate::net::tune(&tcp, self.config.server.tcp_keepalive_s) {
            tracing::debug!(error = %e, "socket options not set");
        }
        // The socket moves to the session thread's own reactor.
        let tcp = match tcp.into_std() {
            Ok(s) => s,
            Err(e) => {
                tracing::warn!(error = %e, "cannot hand the connection to a session thread");
                return;
            }
        };
        let permit = self.sessions.clone().try_acquire_owned().ok();
        let (shard, handle) = self.threads.next();
        let span = tracing::info_span!("session", client = %addr, user = tracing::field::Empty, app = tracing::field::Empty);
        let server = self.clone();
        let session = async move {
            let tcp = match TcpStream::from_std(tcp) {
                Ok(t) => t,
                Err(e) => {
                    tracing::warn!(error = %e, "cannot register the connection");
                    return;
                }
            };
            let reject = permit.is_none().then_some(ClientError::TooManyConnections);
            match handshake(&server, tcp, reject, shard).await {
                Handshake::Session(mut started) => {
                    let span = tracing::Span::current();
                    span.record("user", started.user.as_str());
                    span.record("app", started.application_name.as_str());
                    let key = started.client_key.clone();
                    let pool_key = std::mem::take(&mut started.pool_key);
                    server.register_cancel(&key, (started.upstream.pid, started.upstream.secret));
                    tracing::info!("session started");
                    let (kept, shard) = server.run_session(*started, addr, shard).await;
                    let cancelled = server.unregister_cancel(&key);
                    match kept {
                        Some(conn) if !cancelled && !server.shutdown.is_cancelled() => {
                            server.pool.put(shard, pool_key, *conn);
                        }
                        Some(_) => {
                            tracing::debug!("upstream session closed: cancel sent or stopping")
                        }
                        None => {}
                    }
                    tracing::info!("session ended");
                }
                Handshake::Cancel { pid, secret } => server.cancel(pid, &secret).await,
                Handshake::Closed => {}
            }
            drop(permit);
        };
        self.tracker.spawn_on(session.instrument(span), handle);
    }
}

/// Part of a session's life on one session thread.
enum Segment {
    Ended(Option<Box<UpstreamConn>>),
    Moved(Box<Detached>, usize),
}

impl Server {
    /// Run a started session on thread `home` (where this task runs) and wherever it is moved;
    /// returns what `session::run` kept and the thread the session ended on.
    async fn run_session(
        self: &Arc<Self>,
        started: crate::front::startup::Started,
        addr: SocketAddr,
        home: usize,
    ) -> (Option<Box<UpstreamConn>>, usize) {
        let session = Session::new(self, started, addr);
        let mut here = home;
        let mut segment = self.clone().segment(session, here).await;
        loop {
            match segment {
                Segment::Ended(kept) => return (kept, here),
                Segment::Moved(detached, to) => {
                    self.threads.count_move();
                    here = to;
                    let server = self.clone();
                    let next = async move {
                        match detached.attach() {
                            Ok(session) => server.segment(session, to).await,
                            Err(e) => {
                                tracing::warn!(error = %e, "cannot register a moved session");
                                Segment::Ended(None)
                            }
                        }
                    }
                    .instrument(tracing::Span::current());
                    segment = if to == home {
                        next.await
                    } else {
                        // Stopping the threads at shutdown ends the session there.
                        self.threads
                            .handle(to)
                            .spawn(next)
                            .await
                            .unwrap_or(Segment::Ended(None))
                    };
                }
            }
        }
    }

    /// Run the session on thread `here` until it ends or is moved away.
    async fn segment(self: Arc<Self>, session: Box<Session>, here: usize) -> Segment {
        let lane = self.threads.lane(here);
        // Any session that can move listens for requests (from the balancer, or tests).
        let movable = self.threads.len() > 1 && session.movable();
        lane.enter();
        let outcome = crate::session::run(&self, session, movable.then_some(lane)).await;
        lane.leave();
        match outcome {
            Outcome::Ended(kept) => Segment::Ended(kept),
            Outcome::Move(session, to) => match session.detach() {
                Ok(detached) => Segment::Moved(Box::new(detached), to),
                Err(e) => {
                    tracing::warn!(error = %e, "cannot move a session");
                    Segment::Ended(None)
                }
            },
        }
    }

    /// Ask up to `n` sessions on session thread `from` to move to thread `to` (what the
    /// balancer does; public for tests).
    pub fn move_sessions(&self, from: usize, to: usize, n: usize) {
        self.threads.request_moves(from, to, n);
    }

    /// Sessions moved between session threads so far.
    pub fn sessions_moved(&self) -> usize {
        self.threads.moved()
    }

    /// Sessions running on each session thread now.
    pub fn sessions_per_thread(&self) -> Vec<usize> {
        self.threads.sessions()
    }
}

fn load_tls(
    cert: &std::path::Path,
    key: &std::path::Path,
) -> Result<(TlsAcceptor, Vec<u8>), ServeError> {
    use rustls::pki_types::pem::PemObject;
    use rustls::pki_types::{CertificateDer, PrivateKeyDer};
    let err = |e: &dyn std::fmt::Display| ServeError::Tls(e.to_string());
    let pem = std::fs::read(cert).map_err(|e| err(&e))?;
    let certs = CertificateDer::pem_slice_iter(&pem)
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| err(&e))?;
    let key = PrivateKeyDer::from_pem_file(key).map_err(|e| err(&e))?;
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let mut cfg = rustls::ServerConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .map_err(|e| err(&e))?
        .with_no_client_auth()
        .with_single_cert(certs, key)
        .map_err(|e| err(&e))?;
    cfg.alpn_protocols = vec![b"postgresql".to_vec()];
    Ok((TlsAcceptor::from(Arc::new(cfg)), pem))
}

/// A started pgveil (used by `serve`, the demo and tests).
pub struct Running {
    pub addr: SocketAddr,
    pub server: Arc<Server>,
    pub task: tokio::task::JoinHandle<()>,
}

impl Running {
    /// Stop accepting and wait for sessions (up to the grace period).
    pub async fn shutdown(self) {
        self.server.shutdown.cancel();
        let _ = self.task.await;
    }
}

/// Load the catalog, start the reload listener and the accept loop.
pub async fn start(config: Config) -> Result<Running, ServeError> {
    let listener = TcpListener::bind(config.listen_addr())
        .await
        .map_err(|e| ServeError::Bind(config.server.listen.clone(), e))?;
    start_on(config, listener).await
}

/// As [`start`], on an already bound listener.
pub async fn start_on(config: Config, listener: TcpListener) -> Result<Running, ServeError> {
    let addr = listener
        .local_addr()
        .map_err(|e| ServeError::Bind(config.server.listen.clone(), e))?;
    let store = crate::control::initial_store(&config)
        .await
        .map_err(|e| ServeError::Catalog(e.to_string()))?;
    let server = Server::new(config, store)?;
    crate::control::spawn_reloader(server.clone());
    if server.pool.enabled() {
        tokio::spawn(sweep_pool(server.clone()));
    }
    let target = server.config.server.thread_busy_target;
    if target > 0.0 && server.threads.len() > 1 {
        tokio::spawn(balance_threads(server.clone(), target));
    }
    let task = tokio::spawn(server.clone().run(listener));
    tracing::info!(%addr, "pgveil listening");
    Ok(Running { addr, server, task })
}

/// Balance the session threads until shutdown.
async fn balance_threads(server: Arc<Server>, target: f64) {
    let mut every = tokio::time::interval(BALANCE_EVERY);
    every.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            _ = server.shutdown.cancelled() => break,
            _ = every.tick() => server.threads.rebalance(target),
        }
    }
}

/// Close pooled upstream sessions as they expire, and all of them at shutdown.
async fn sweep_pool(server: Arc<Server>) {
    let every = server.pool.sweep_interval();
    loop {
        tokio::select! {
            _ = server.shutdown.cancelled() => break,
            _ = tokio::time::sleep(every) => server.pool.sweep(),
        }
    }
    server.pool.clear();
}
