//! One client session after startup: two pumps relaying raw protocol bytes.
//!
//! client → upstream: frames each frontend message (5-byte header, size-bounded). Only
//! `Query` ('Q'), `Parse` ('P') and `FunctionCall` ('F') carry SQL; for a restricted user they
//! are enforced (rewritten or refused) and re-encoded; a restricted user's Query may instead
//! run as pgveil's own prepared statement (`bound`); Bind, Describe and Close are checked
//! (policy stamp, reserved names); everything else is forwarded as is.
//!
//! upstream → client: forwarded as raw bytes without buffering whole messages, except
//! `ErrorResponse` ('E'), which is inspected: a refusal is sent upstream as a marker statement
//! that fails in PostgreSQL (`relation "pgveil_refusal_<token>_<n>" does not exist`), and the
//! pump swaps that error for pgveil's own. PostgreSQL itself therefore provides the right
//! message ordering, pipelining behaviour (skip until Sync) and transaction abort. The
//! ParseComplete, BindComplete, CloseComplete and NoData of a bound statement are dropped.
//!
//! With `upstream.pool_size`, a client's Terminate outside an extended-protocol batch is not
//! forwarded: pgveil sends `DISCARD ALL`, the upstream pump checks the remaining answers (and
//! relays nothing), and a clean session goes back to the pool (rules in `upstream::pool`).

mod bound;
mod frame;
mod refusal;

use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

use bytes::{Buf, BufMut, BytesMut};
use futures::future::{BoxFuture, FutureExt};
use futures::stream::{FuturesUnordered, StreamExt};
use pgwire::messages::extendedquery::Parse;
use pgwire::messages::simplequery::Query;
use pgwire::messages::Message;
use pgwire::tokio::server::MaybeTls;
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::net::{tcp, TcpStream};
use tokio_util::either::Either;

use crate::error::ClientError;
use crate::front::startup::Started;
use crate::server::{Lane, Server};
use crate::sql::{EnforceCtx, PolicyStamp, Simple, Verdict};
use crate::upstream::pool::TERMINATE;
use crate::upstream::{DetachedConn, UpstreamConn};
use bound::{Statements, Units, NAME_PREFIX};
use frame::{header_len, next_frame, reserve_rest, Frame};
pub use refusal::Refusals;

/// How long pgveil waits for `DISCARD ALL` before it closes the upstream session instead.
const RESET_TIMEOUT: Duration = Duration::from_secs(5);

/// How the upstream pump ended.
enum UpstreamEnd {
    /// PostgreSQL closed the connection.
    Closed,
    /// pgveil's reset finished; true if the session is clean and may be reused.
    Reset(bool),
    /// The session is to move to this session thread.
    Move(usize),
    /// pgveil is stopping and the shutdown grace period is over.
    Stopping,
}

/// A session's sockets and everything its two pumps keep between messages, so that the
/// session can stop between messages and go on elsewhere (another session thread).
pub struct Session {
    io: MaybeTls,
    upstream: UpstreamConn,
    pumps: Pumps,
}

/// What the two pumps keep between messages (all of it moves with the session).
struct Pumps {
    client: ClientPump,
    up: UpPump,
    shared: Shared,
}

/// How `run` ended.
pub enum Outcome {
    /// The session is over; the upstream session if it was reset for reuse.
    Ended(Option<Box<UpstreamConn>>),
    /// Asked to move to session thread `to` while both pumps were waiting for input.
    Move(Box<Session>, usize),
}

/// A session off any runtime: plain sockets that the next thread registers with its own.
pub struct Detached {
    client: std::net::TcpStream,
    upstream: DetachedConn,
    pumps: Pumps,
}

impl Session {
    pub fn new(server: &Arc<Server>, started: Started, addr: SocketAddr) -> Box<Session> {
        let Started {
            io,
            read_buf,
            user,
            mut upstream,
            ..
        } = started;
        let leftover = std::mem::take(&mut upstream.leftover);
        let pumps = Pumps {
            client: ClientPump {
                buf: read_buf,
                out: BytesMut::with_capacity(8192),
                state: ClientState {
                    prepared: Prepared::default(),
                    statements: Statements::new(server.config.server.prepare_simple_statements),
                },
                ctx: EnforceCtx::new(server.clone(), user, Some(addr.ip())),
            },
            up: UpPump {
                buf: leftover,
                out: BytesMut::with_capacity(64 * 1024),
                passthrough: 0,
                reset: ResetCheck::new(),
            },
            shared: Shared {
                refusals: Arc::new(Refusals::new()),
                units: Arc::new(Units::started()),
            },
        };
        Box::new(Session {
            io,
            upstream,
            pumps,
        })
    }

    /// Can it move between threads? Only with plain TCP on both sides (a TLS stream cannot be
    /// taken apart and rebuilt), and not while pgveil resets it for reuse.
    pub fn movable(&self) -> bool {
        matches!(self.io, MaybeTls::Plain(_))
            && matches!(self.upstream.stream, Either::Left(_))
            && !self.pumps.shared.units.resetting()
    }

    /// Take the sockets off this thread's reactor. Fails (and the session ends) if one of
    /// them is not plain TCP, which `movable` rules out.
    pub fn detach(self: Box<Session>) -> std::io::Result<Detached> {
        let Session {
            io,
            upstream,
            pumps,
        } = *self;
        let MaybeTls::Plain(client_tcp) = io else {
            return Err(std::io::Error::other("only plain TCP sessions move"));
        };
        Ok(Detached {
            client: client_tcp.into_std()?,
            upstream: upstream.detach()?,
            pumps,
        })
    }
}

impl Detached {
    /// Register the sockets with the current thread's reactor.
    pub fn attach(self) -> std::io::Result<Box<Session>> {
        Ok(Box::new(Session {
            io: MaybeTls::Plain(tokio::net::TcpStream::from_std(self.client)?),
            upstream: self.upstream.attach()?,
            pumps: self.pumps,
        }))
    }
}

/// Run the session until either side closes, or until it is asked to move to another
/// session thread (`lane`) while both pumps wait for input.
pub async fn run(server: &Arc<Server>, mut session: Box<Session>, lane: Option<&Lane>) -> Outcome {
    let waiting = Waiting::default();
    let ended = {
        let Session {
            io,
            upstream,
            pumps: Pumps { client, up, shared },
        } = &mut *session;
        let shared = &*shared;
        let (client_rd, mut client_wr) = halves(match io {
            MaybeTls::Plain(tcp) => Ok(tcp),
            other => Err(other),
        });
        let (mut up_rd, mut up_wr) = halves(match &mut upstream.stream {
            Either::Left(tcp) => Ok(tcp),
            other => Err(other),
        });
        let to_upstream = client_to_upstream(
            server,
            client_rd,
            client,
            &mut up_wr,
            shared,
            &waiting.client,
        );
        let to_client =
            upstream_to_client(&mut up_rd, up, &mut client_wr, shared, &waiting.upstream);
        let moved = async {
            match lane {
                Some(lane) => {
                    lane.wait_for_move(|| waiting.both() && !shared.units.resetting())
                        .await
                }
                None => std::future::pending().await,
            }
        };
        let ended = first_to_end([
            async {
                to_upstream
                    .await
                    .map(|()| UpstreamEnd::Closed)
                    .map_err(|e| ("client", e))
            }
            .boxed(),
            async { to_client.await.map_err(|e| ("upstream", e)) }.boxed(),
            async { Ok(UpstreamEnd::Move(moved.await)) }.boxed(),
            async {
                server.stopping.cancelled().await;
                Ok(UpstreamEnd::Stopping)
            }
            .boxed(),
        ])
        .await;
        match &ended {
            Err((_, SessionError::Frame(e))) => {
                // A malformed or oversized message: say why, then end only this session.
                tracing::warn!(error = %e, "closing session: bad frontend message");
                let fatal = ClientError::Protocol(format!("invalid frontend message: {e}"));
                let _ = client_wr.write_all(&fatal.encode()).await;
                let _ = client_wr.flush().await;
            }
            Ok(UpstreamEnd::Stopping) => {
                // As PostgreSQL's fast shutdown: the client hears why (57P01) when it is
                // between messages; a statement still running is cancelled, and PostgreSQL
                // gets Terminate when it is between messages (an open transaction rolls
                // back); mid-message, a connection just closes.
                if waiting.upstream.load(Ordering::Relaxed) && up.passthrough == 0 {
                    let _ = client_wr
                        .write_all(&ClientError::ShuttingDown.encode())
                        .await;
                    let _ = client_wr.flush().await;
                }
                if !shared.units.idle() {
                    if let Err(e) = server.upstream.cancel(upstream.pid, upstream.secret).await {
                        tracing::debug!(error = %e, "cancel at shutdown failed");
                    }
                }
                if waiting.client.load(Ordering::Relaxed) {
                    let _ = up_wr.write_all(&TERMINATE).await;
                    let _ = up_wr.flush().await;
                }
            }
            _ => {}
        }
        ended
    };
    match ended {
        Ok(UpstreamEnd::Move(to)) => Outcome::Move(session, to),
        Ok(UpstreamEnd::Reset(true)) => {
            // (its leftover bytes went to the upstream pump in `Session::new`)
            Outcome::Ended(Some(Box::new(session.upstream)))
        }
        Ok(_) | Err((_, SessionError::Frame(_))) => Outcome::Ended(None),
        Err((side, e)) => {
            tracing::debug!(error = %e, "{side} side ended");
            Outcome::Ended(None)
        }
    }
}

/// How a session's run ends, and which side ended it on error.
type Ended = Result<UpstreamEnd, (&'static str, SessionError)>;

/// The first of the session's branches (the two pumps, the move request, the end of the
/// shutdown grace period) to end; the others are dropped. Each branch gets its own waker
/// (`FuturesUnordered`), so a wake-up polls only the side that has something to do, where
/// `tokio::select!` would poll all of them (callgrind, 1 client: about 300 instructions per
/// query less).
async fn first_to_end(branches: [BoxFuture<'_, Ended>; 4]) -> Ended {
    let mut set: FuturesUnordered<_> = branches.into_iter().collect();
    // (never empty; were it, the session would end without reuse)
    set.next().await.unwrap_or(Ok(UpstreamEnd::Closed))
}

/// The read and write side of a stream, both polled from the session's one task.
type Halves<'a, S> = (
    Either<tcp::ReadHalf<'a>, tokio::io::ReadHalf<&'a mut S>>,
    Either<tcp::WriteHalf<'a>, tokio::io::WriteHalf<&'a mut S>>,
);

/// Split plain TCP by reference (no lock); anything else (TLS) with `tokio::io::split`,
/// which takes a lock on every read and write.
fn halves<'a, S: AsyncRead + AsyncWrite + Unpin>(
    stream: Result<&'a mut TcpStream, &'a mut S>,
) -> Halves<'a, S> {
    match stream {
        Ok(tcp) => {
            let (rd, wr) = tcp.split();
            (Either::Left(rd), Either::Left(wr))
        }
        Err(other) => {
            let (rd, wr) = tokio::io::split(other);
            (Either::Right(rd), Either::Right(wr))
        }
    }
}

/// Which pumps are waiting for input with nothing left to write (the only point at which a
/// session may stop and move: nothing is half-read or half-written).
#[derive(Default)]
struct Waiting {
    client: AtomicBool,
    upstream: AtomicBool,
}

impl Waiting {
    fn both(&self) -> bool {
        self.client.load(Ordering::Relaxed) && self.upstream.load(Ordering::Relaxed)
    }
}

/// Await a read with `flag` set for its duration.
async fn read_waiting<R: AsyncRead + Unpin>(
    rd: &mut R,
    buf: &mut BytesMut,
    flag: &AtomicBool,
) -> std::io::Result<usize> {
    flag.store(true, Ordering::Relaxed);
    let n = rd.read_buf(buf).await;
    flag.store(false, Ordering::Relaxed);
    n
}

/// What the two pumps share: pending refusals and the count of unanswered units.
struct Shared {
    refusals: Arc<Refusals>,
    units: Arc<Units>,
}

/// The client pump's own state.
struct ClientState {
    prepared: Prepared,
    statements: Statements,
}

/// Session I/O errors (never shown to the client as text).
#[derive(Debug, thiserror::Error)]
pub enum SessionError {
    #[error("i/o: {0}")]
    Io(#[from] std::io::Error),
    #[error("protocol: {0}")]
    Protocol(String),
    #[error(transparent)]
    Frame(#[from] frame::FrameError),
}

/// The client pump's state between messages.
struct ClientPump {
    /// Bytes read from the client, not yet framed.
    buf: BytesMut,
    /// What goes upstream next.
    out: BytesMut,
    state: ClientState,
    ctx: EnforceCtx,
}

async fn client_to_upstream<R, W>(
    server: &Arc<Server>,
    mut rd: R,
    pump: &mut ClientPump,
    mut up: W,
    shared: &Shared,
    waiting: &AtomicBool,
) -> Result<(), SessionError>
where
    R: AsyncRead + Unpin,
    W: AsyncWrite + Unpin,
{
    let max = server.config.server.max_message_bytes;
    let ClientPump {
        buf,
        out,
        state,
        ctx,
    } = pump;
    loop {
        // Frames are handled where they lie, under the policy as of now; the buffer advances
        // once per read.
        ctx.refresh();
        let mut done = 0;
        let mut sending = Outgoing::new(buf, out);
        loop {
            let frame = match next_frame(&buf[done..], max) {
                Ok(Some(frame)) => frame,
                Ok(None) => break,
                Err(e) => {
                    // Oversized or malformed: forward what came before, then end the session.
                    up.write_all(sending.bytes()).await?;
                    return Err(e.into());
                }
            };
            let len = frame.bytes.len();
            if frame.tag == b'X' {
                let out = std::mem::take(sending.bytes());
                return terminate(server, frame, shared, state, out, &mut up).await;
            }
            handle_frame(frame, ctx, shared, state, &mut sending)?;
            done += len;
        }
        let direct = sending.finish();
        if !direct.is_empty() {
            up.write_all(&buf[direct]).await?;
        }
        buf.advance(done);
        reserve_rest(buf);
        if !out.is_empty() {
            up.write_all(out).await?;
            out.clear();
        }
        if read_waiting(&mut rd, buf, waiting).await? == 0 {
            return Ok(());
        }
    }
}

/// The client's Terminate: forwarded, or (pooling, no batch open, not known to be in a
/// transaction) replaced by `DISCARD ALL` whose answer the upstream pump checks; this pump
/// then only waits out the reset timeout.
async fn terminate<W: AsyncWrite + Unpin>(
    server: &Server,
    frame: Frame<'_>,
    shared: &Shared,
    state: &ClientState,
    mut out: BytesMut,
    up: &mut W,
) -> Result<(), SessionError> {
    // Units still unanswered run first (as PostgreSQL would run them before Terminate); the
    // reset then fails in a transaction, and any error or COPY keeps the session from reuse.
    let reusable = server.pool.enabled()
        && !server.shutdown.is_cancelled()
        && !state.statements.batch_open()
        && !shared.units.idle_in_transaction();
    if !reusable {
        out.extend_from_slice(frame.bytes);
        up.write_all(&out).await?;
        up.flush().await?;
        return Ok(());
    }
    encode(&Query::new("DISCARD ALL".into()), &mut out)?;
    shared.units.begin_reset();
    up.write_all(&out).await?;
    up.flush().await?;
    server.timers.sleep(RESET_TIMEOUT).await;
    tracing::debug!("upstream reset timed out");
    Ok(())
}

/// What goes upstream from one batch of client messages. Runs of messages forwarded as they
/// are stay where they lie in the read buffer (`src`) until something else has to follow
/// them; when nothing else does, they are written straight from there (no copy).
struct Outgoing<'a> {
    src: &'a [u8],
    /// The run of `src` not yet copied into `out`.
    run: std::ops::Range<usize>,
    out: &'a mut BytesMut,
}

impl<'a> Outgoing<'a> {
    fn new(src: &'a [u8], out: &'a mut BytesMut) -> Self {
        Outgoing {
            src,
            run: 0..0,
            out,
        }
    }

    /// Forward `msg` as it is (a message of `src`; anything else is copied).
    #[inline]
    fn pass(&mut self, msg: &[u8]) {
        let at = msg.as_ptr().addr().wrapping_sub(self.src.as_ptr().addr());
        if at == self.run.end && msg.len() <= self.src.len() - at {
            self.run.end += msg.len();
            return;
        }
        self.flush();
        if at <= self.src.len() && msg.len() <= self.src.len() - at {
            self.run = at..at + msg.len();
        } else {
            self.out.extend_from_slice(msg);
        }
    }

    /// Where other bytes go (after everything passed so far).
    fn bytes(&mut self) -> &mut BytesMut {
        self.flush();
        self.out
    }

    fn flush(&mut self) {
        self.out.extend_from_slice(&self.src[self.run.clone()]);
        self.run = self.run.end..self.run.end;
    }

    /// The part of `src` to write as it is, when nothing else was written; otherwise
    /// everything is in `out` and the range is empty.
    fn finish(mut self) -> std::ops::Range<usize> {
        if self.out.is_empty() {
            return self.run;
        }
        self.flush();
        0..0
    }
}

/// Forward or rewrite one frontend message into `out`.
fn handle_frame(
    frame: Frame<'_>,
    ctx: &EnforceCtx,
    shared: &Shared,
    state: &mut ClientState,
    out: &mut Outgoing<'_>,
) -> Result<(), SessionError> {
    let refusals = &shared.refusals;
    match frame.tag {
        b'Q' => {
            let result = if ctx.passes_unread(frame.bytes.get(5..).unwrap_or_default()) {
                pass_query(frame.bytes, &mut state.statements, out);
                Ok(())
            } else if let Some((query, _)) = cstr(frame.bytes, 5) {
                simple_query(frame.bytes, query, ctx, shared, state, out)
            } else {
                let error = not_utf8(frame.bytes, "Query")?;
                refuse_query(refusals, &mut state.statements, error, out.bytes())
            };
            shared.units.sent();
            result
        }
        b'P' => parse_message(frame.bytes, ctx, refusals, state, out),
        b'B' => {
            let stmt = bind_statement(frame.bytes);
            state.statements.client_message(b'B', stmt, None);
            // A statement prepared under an older policy must not outlive it.
            let checked = match stmt {
                Some(name) if reserved(name, ctx) => Err(reserved_name()),
                Some(name) => state.prepared.recheck(name, ctx),
                None => Ok(()), // malformed: PostgreSQL answers it
            };
            match checked {
                Ok(()) => {
                    out.pass(frame.bytes);
                    Ok(())
                }
                Err(error) => refuse_parse(refusals, error, out.bytes()),
            }
        }
        b'D' if frame.bytes.get(5) == Some(&b'S')
            && cstr(frame.bytes, 6).is_some_and(|(n, _)| reserved(n, ctx)) =>
        {
            state.statements.client_message(b'D', None, None);
            refuse_parse(refusals, reserved_name(), out.bytes())
        }
        b'C' => {
            let name = cstr(frame.bytes, 6).map(|(n, _)| n);
            state.statements.client_message(b'C', name, None);
            state.prepared.closed(frame.bytes);
            out.pass(frame.bytes);
            Ok(())
        }
        b'F' if ctx.is_restricted() => {
            shared.units.sent();
            // Fast-path function calls (large objects) bypass SQL: refuse for restricted users.
            let err = ClientError::unsupported(
                "pgveil does not allow fast-path function calls for restricted users",
            );
            refuse_query(refusals, &mut state.statements, err, out.bytes())
        }
        tag => {
            if matches!(tag, b'S' | b'F') {
                shared.units.sent();
            }
            if tag == b'F' {
                state.statements.forget_all(); // an unrestricted function call may run any SQL
            }
            state.statements.client_message(tag, None, None);
            out.pass(frame.bytes);
            Ok(())
        }
    }
}

/// A Query message: forwarded, rewritten, refused, or run as pgveil's prepared statement.
fn simple_query(
    msg: &[u8],
    query: &str,
    ctx: &EnforceCtx,
    shared: &Shared,
    state: &mut ClientState,
    out: &mut Outgoing<'_>,
) -> Result<(), SessionError> {
    let statements = &mut state.statements;
    statements.client_query(query);
    let sql = match ctx.enforce_simple_parts(query) {
        Simple::Verdict(Verdict::PassThrough) => {
            pass_query(msg, statements, out);
            return Ok(());
        }
        Simple::Verdict(Verdict::Forward(sql)) => sql,
        Simple::Verdict(Verdict::Refuse { prefix, error }) => {
            shared.refusals.statement_with(prefix, error)
        }
        Simple::Template(t) => {
            if let Some((plan, params)) = t.bind_plan() {
                if statements.bind(&shared.units, plan, params, out.bytes())? {
                    return Ok(());
                }
            }
            t.text()
        }
    };
    statements.text_query();
    encode(&Query::new(sql), out.bytes())
}

/// A Parse: enforced, and remembered with the policy it was enforced under (Bind checks
/// it again under a newer one).
fn parse_message(
    msg: &[u8],
    ctx: &EnforceCtx,
    refusals: &Refusals,
    state: &mut ClientState,
    out: &mut Outgoing<'_>,
) -> Result<(), SessionError> {
    let Some((name, query)) = parse_name_and_query(msg) else {
        state.statements.client_message(b'P', None, None);
        return refuse_parse(refusals, not_utf8(msg, "Parse")?, out.bytes());
    };
    let reserved = reserved(name, ctx);
    let unread = !reserved && ctx.passes_unread(query);
    let text = if unread {
        None
    } else {
        std::str::from_utf8(query).ok()
    };
    state.statements.client_message(b'P', Some(name), text);
    let verdict = match text {
        _ if reserved => Err(reserved_name()),
        _ if unread => Ok(Verdict::PassThrough),
        Some(text) => Ok(ctx.enforce_prepared(text)),
        None => Err(encoding_error(query)),
    };
    let prepared = &mut state.prepared;
    match verdict {
        Ok(Verdict::PassThrough) => {
            state.statements.forget_all(); // unrestricted now, as for a Query
            prepared.insert(name, query, None, ctx.stamp());
            out.pass(msg);
            Ok(())
        }
        Ok(Verdict::Forward(sql)) => {
            with_query(msg, name, query, &sql, out.bytes())?;
            prepared.insert(name, query, Some(sql), ctx.stamp());
            Ok(())
        }
        Ok(Verdict::Refuse { error, .. }) | Err(error) => {
            prepared.remove(name);
            refuse_parse(refusals, error, out.bytes())
        }
    }
}

/// A Query whose only effect upstream is the refusal's error (and, as for any Query, the
/// end of the unnamed statement).
fn refuse_query(
    refusals: &Refusals,
    statements: &mut Statements,
    error: ClientError,
    out: &mut BytesMut,
) -> Result<(), SessionError> {
    statements.text_query();
    encode(
        &Query::new(refusals.statement_with(String::new(), error)),
        out,
    )
}

/// A Parse that creates no statement upstream, only the refusal's error.
fn refuse_parse(
    refusals: &Refusals,
    error: ClientError,
    out: &mut BytesMut,
) -> Result<(), SessionError> {
    let sql = refusals.statement_with(String::new(), error);
    encode(&Parse::new(None, sql, vec![]), out)
}

/// Forward the Query `msg` as it came.
fn pass_query(msg: &[u8], statements: &mut Statements, out: &mut Outgoing<'_>) {
    // Unrestricted now: whatever it does to prepared statements, pgveil starts afresh.
    statements.forget_all();
    statements.text_query();
    out.pass(msg);
}

/// Statement name of a Bind message.
fn bind_statement(msg: &[u8]) -> Option<&str> {
    let (_portal, next) = cstr(msg, 5)?;
    Some(cstr(msg, next)?.0)
}

/// A protocol-level statement name reserved for pgveil, used by a restricted user.
fn reserved(name: &str, ctx: &EnforceCtx) -> bool {
    name.starts_with(NAME_PREFIX) && ctx.is_restricted()
}

fn reserved_name() -> ClientError {
    ClientError::denied(format!(
        "prepared statement names starting with \"{NAME_PREFIX}\" are reserved for pgveil"
    ))
}

/// Statements prepared with the extended protocol, by name.
#[derive(Default)]
struct Prepared {
    /// The unnamed statement, kept apart: drivers replace it on almost every query, and this
    /// way that hashes nothing.
    unnamed: Option<PreparedEntry>,
    /// (foldhash, randomly seeded: names come from the client, and SipHash cost more than
    /// the rest of a Bind)
    named: foldhash::HashMap<String, PreparedEntry>,
}

struct PreparedEntry {
    /// The SQL as the client sent it (read as text only if enforced again).
    original: Vec<u8>,
    /// What was sent upstream, when it differs from `original`.
    rewritten: Option<String>,
    /// The policy it was enforced under.
    stamp: PolicyStamp,
}

/// A NUL-terminated string at `pos`, and the position after it.
fn cstr(b: &[u8], pos: usize) -> Option<(&str, usize)> {
    let rest = b.get(pos..)?;
    if rest.first() == Some(&0) {
        return Some(("", pos + 1)); // the unnamed statement or portal: most names
    }
    let end = memchr::memchr(0, rest)?;
    Some((std::str::from_utf8(&rest[..end]).ok()?, pos + end + 1))
}

/// Why the strings of message `msg` could not be read: text that is not UTF-8 is answered
/// as PostgreSQL answers it (22021, the session goes on); anything else is malformed.
fn not_utf8(msg: &[u8], what: &str) -> Result<ClientError, SessionError> {
    let body = msg.get(5..).unwrap_or_default();
    match std::str::from_utf8(body) {
        Ok(_) => Err(SessionError::Protocol(format!("malformed {what}"))),
        Err(_) => Ok(encoding_error(body)),
    }
}

/// PostgreSQL's error for `text` that is not UTF-8, naming the first bad bytes.
fn encoding_error(text: &[u8]) -> ClientError {
    let bad = match std::str::from_utf8(text) {
        Ok(_) => &[][..],
        Err(e) => {
            let rest = &text[e.valid_up_to()..];
            &rest[..e.error_len().unwrap_or(rest.len())] // (at most 3 bytes)
        }
    };
    let bytes: Vec<String> = bad.iter().map(|b| format!("0x{b:02x}")).collect();
    ClientError::Encoding(format!(
        "invalid byte sequence for encoding \"UTF8\": {}",
        bytes.join(" ")
    ))
}

/// The Parse message `msg` (statement `name`, SQL `query`) with `sql` in place of its SQL:
/// name and parameter types are copied as they came.
fn with_query(
    msg: &[u8],
    name: &str,
    query: &[u8],
    sql: &str,
    out: &mut BytesMut,
) -> Result<(), SessionError> {
    let tail = msg
        .get(5 + name.len() + 1 + query.len() + 1..)
        .ok_or_else(|| SessionError::Protocol("short Parse".into()))?;
    let len = i32::try_from(4 + name.len() + 1 + sql.len() + 1 + tail.len())
        .map_err(|_| SessionError::Protocol("rewritten Parse too long".into()))?;
    out.put_u8(b'P');
    out.put_i32(len);
    for part in [name.as_bytes(), b"\0", sql.as_bytes(), b"\0", tail] {
        out.put_slice(part);
    }
    Ok(())
}

/// Statement name and SQL of a Parse message (tag and length included), without copying;
/// the SQL is read as text only where it must be.
fn parse_name_and_query(msg: &[u8]) -> Option<(&str, &[u8])> {
    let (name, next) = cstr(msg, 5)?;
    let rest = msg.get(next..)?;
    Some((name, &rest[..memchr::memchr(0, rest)?]))
}

impl Prepared {
    fn get_mut(&mut self, name: &str) -> Option<&mut PreparedEntry> {
        if name.is_empty() {
            self.unnamed.as_mut()
        } else {
            self.named.get_mut(name)
        }
    }

    fn insert(
        &mut self,
        name: &str,
        original: &[u8],
        rewritten: Option<String>,
        stamp: PolicyStamp,
    ) {
        // The unnamed statement is replaced on every Parse: reuse its buffer.
        if let Some(slot) = self.get_mut(name) {
            slot.original.clear();
            slot.original.extend_from_slice(original);
            slot.rewritten = rewritten;
            slot.stamp = stamp;
            return;
        }
        let entry = PreparedEntry {
            original: original.to_owned(),
            rewritten,
            stamp,
        };
        if name.is_empty() {
            self.unnamed = Some(entry);
        } else {
            self.named.insert(name.to_owned(), entry);
        }
    }

    fn remove(&mut self, name: &str) {
        if name.is_empty() {
            self.unnamed = None;
        } else {
            self.named.remove(name);
        }
    }

    /// Close ('C'): forget a closed statement.
    fn closed(&mut self, msg: &[u8]) {
        if msg.get(5) == Some(&b'S') {
            if let Some((name, _)) = cstr(msg, 6) {
                self.remove(name);
            }
        }
    }

    /// Bind ('B'): the statement it uses must still enforce to exactly what was prepared.
    /// Under the very same policy that is certain; otherwise it is enforced again.
    fn recheck(&mut self, stmt: &str, ctx: &EnforceCtx) -> Result<(), ClientError> {
        let Some(entry) = self.get_mut(stmt) else {
            return Ok(());
        };
        if entry.stamp == ctx.stamp() {
            return Ok(());
        }
        let Ok(text) = std::str::from_utf8(&entry.original) else {
            return Err(encoding_error(&entry.original));
        };
        let now = match ctx.enforce_prepared(text) {
            Verdict::PassThrough => None,
            Verdict::Forward(sql) => Some(sql),
            Verdict::Refuse { error, .. } => return Err(error),
        };
        if now == entry.rewritten {
            entry.stamp = ctx.stamp();
            Ok(())
        } else {
            Err(ClientError::Denied {
                message: "your permissions changed since this statement was prepared".into(),
                hint: Some("prepare the statement again".into()),
            })
        }
    }
}

fn encode<M: Message>(m: &M, out: &mut BytesMut) -> Result<(), SessionError> {
    m.encode(out)
        .map_err(|e| SessionError::Protocol(e.to_string()))
}

/// The upstream pump's state between messages.
struct UpPump {
    /// Bytes read from PostgreSQL, not yet relayed.
    buf: BytesMut,
    /// What goes to the client next.
    out: BytesMut,
    /// Bytes of the current message still to relay as they come.
    passthrough: usize,
    reset: ResetCheck,
}

async fn upstream_to_client<R, W>(
    mut up: R,
    pump: &mut UpPump,
    mut client: W,
    shared: &Shared,
    waiting: &AtomicBool,
) -> Result<UpstreamEnd, SessionError>
where
    R: AsyncRead + Unpin,
    W: AsyncWrite + Unpin,
{
    let UpPump {
        buf,
        out,
        passthrough,
        reset,
    } = pump;
    loop {
        match relay_upstream(buf, out, passthrough, reset, shared)? {
            Relayed::More { used, need, direct } => {
                if direct {
                    client.write_all(&buf[..used]).await?;
                }
                buf.advance(used);
                buf.reserve(need);
            }
            Relayed::ResetDone(reusable) => return Ok(UpstreamEnd::Reset(reusable)),
        }
        if !out.is_empty() {
            client.write_all(out).await?;
            out.clear();
            if out.capacity() > 1 << 20 {
                *out = BytesMut::with_capacity(64 * 1024);
            }
        }
        if buf.is_empty() && buf.capacity() > 1 << 20 {
            // release the memory of a large error message once it has been relayed
            *buf = BytesMut::with_capacity(64 * 1024);
        }
        buf.reserve(8192);
        if read_waiting(&mut up, buf, waiting).await? == 0 {
            client.flush().await?;
            return Ok(UpstreamEnd::Closed);
        }
    }
}

/// What one pass over the upstream bytes read so far did.
enum Relayed {
    /// `used` bytes dealt with (relayed, replaced or dropped); `need` more bytes of room for
    /// a message that is relayed only once whole (an error).
    /// `direct`: `buf[..used]` goes to the client as it is, straight from the read buffer
    /// (nothing was put in `out`: the common case, no copy).
    More {
        used: usize,
        need: usize,
        direct: bool,
    },
    /// pgveil's reset ended: may the session be reused?
    ResetDone(bool),
}

/// Copy the bytes relayed as they are, `buf[*run..pos]`, into `out`; the run starts again
/// at `pos`.
fn end_run(out: &mut BytesMut, buf: &[u8], run: &mut usize, pos: usize) {
    out.extend_from_slice(&buf[*run..pos]);
    *run = pos;
}

/// Relay the complete messages in `buf` into `out` (and the part of a message being passed
/// through): runs of messages that go as they are are copied in one piece, and when all of
/// it goes as it is, nothing is copied (`direct`).
fn relay_upstream(
    buf: &[u8],
    out: &mut BytesMut,
    passthrough: &mut usize,
    reset: &mut ResetCheck,
    shared: &Shared,
) -> Result<Relayed, SessionError> {
    let units = &shared.units;
    let mut pos = 0; // bytes dealt with
    let mut run = 0; // buf[run..pos] goes to the client as it is
    let mut need = 0;
    loop {
        if *passthrough > 0 {
            let n = (*passthrough).min(buf.len() - pos);
            if n == 0 {
                break;
            }
            pos += n;
            *passthrough -= n;
            continue;
        }
        let rest = &buf[pos..];
        let Some(len) = header_len(rest) else {
            break;
        };
        let tag = rest[0];
        if len < 4 {
            return Err(SessionError::Protocol(
                "invalid message length from upstream".into(),
            ));
        }
        let whole = rest.get(..=len);
        if units.resetting() {
            end_run(out, buf, &mut run, pos);
            let Some(msg) = whole else {
                if len > RESET_MAX_MESSAGE {
                    return Ok(Relayed::ResetDone(false));
                }
                break;
            };
            pos += msg.len();
            run = pos;
            if let Some(reusable) = reset.step(msg, units) {
                return Ok(Relayed::ResetDone(reusable && pos == buf.len()));
            }
            continue;
        }
        if tag == b'Z' {
            let Some(&status) = rest.get(5) else {
                break; // the transaction status byte is still to come
            };
            units.ready_for_query(status);
        } else if units.ours() && matches!(tag, b'1' | b'2' | b'3' | b'n' | b'E') {
            // Responses a Query would not have produced: dropped (an error is relayed).
            if tag == b'1' {
                units.parse_complete();
            } else if tag == b'E' {
                units.error();
            }
            if tag != b'E' {
                let Some(msg) = whole else {
                    break;
                };
                end_run(out, buf, &mut run, pos);
                pos += msg.len();
                run = pos;
                continue;
            }
        }
        if tag != b'E' {
            *passthrough = len + 1;
            continue;
        }
        let Some(msg) = whole else {
            need = len + 1 - rest.len();
            break;
        };
        end_run(out, buf, &mut run, pos);
        match shared.refusals.replace(msg) {
            Some(replacement) => out.extend_from_slice(&replacement),
            None => out.extend_from_slice(msg),
        }
        pos += msg.len();
        run = pos;
    }
    let direct = run == 0 && out.is_empty();
    if !direct {
        end_run(out, buf, &mut run, pos);
    }
    Ok(Relayed::More {
        used: pos,
        need,
        direct,
    })
}

/// Largest message accepted while resetting (notices, notifications); anything bigger and
/// the session is closed rather than reused.
const RESET_MAX_MESSAGE: usize = 64 * 1024;

/// Checks the answers after pgveil's `DISCARD ALL` went upstream (behind any units of the
/// client's still unanswered).
struct ResetCheck {
    /// The last CommandComplete was `DISCARD ALL`.
    discarded: bool,
}

impl ResetCheck {
    fn new() -> ResetCheck {
        ResetCheck { discarded: false }
    }

    /// One upstream message (nothing reaches the client). `Some(reusable)` at the last
    /// ReadyForQuery, which answers the reset (or earlier, at an error or COPY): reusable only
    /// if the reset itself said exactly `DISCARD ALL` and ended outside a transaction.
    fn step(&mut self, msg: &[u8], units: &Units) -> Option<bool> {
        match msg.first() {
            Some(b'Z') => {
                let status = msg.get(5).copied().unwrap_or(0);
                units.ready_for_query(status);
                if units.idle() {
                    return Some(self.discarded && status == b'I');
                }
                self.discarded = false;
            }
            Some(b'C') => self.discarded = msg.get(5..) == Some(b"DISCARD ALL\0".as_slice()),
            // an error or COPY: not reusable; no need to wait for the rest
            Some(b'E' | b'G' | b'H' | b'W' | b'd' | b'c') => return Some(false),
            // rows, descriptions, notices, notifications, parameter changes: dropped
            _ => {}
        }
        None
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use pgwire::messages::DecodeContext;

    /// Messages passed as they are stay in the read buffer while nothing else follows them;
    /// anything written in between keeps the order.
    #[test]
    fn outgoing_keeps_order_and_copies_only_when_needed() {
        let src = b"AAAABBBBCCCCDDDD".to_vec();
        let mut out = BytesMut::new();
        let mut o = Outgoing::new(&src, &mut out);
        o.pass(&src[0..4]);
        o.pass(&src[4..8]);
        assert_eq!(o.finish(), 0..8);
        assert!(out.is_empty());

        let mut o = Outgoing::new(&src, &mut out);
        o.pass(&src[0..4]);
        o.bytes().extend_from_slice(b"xx");
        o.pass(&src[8..12]); // not next to the run: a new run
        o.pass(b"elsewhere"); // not in src: copied
        o.pass(&src[12..16]);
        assert_eq!(o.finish(), 0..0);
        assert_eq!(&out[..], b"AAAAxxCCCCelsewhereDDDD");
    }

    /// A rewritten Parse keeps its statement name and parameter types, byte for byte.
    #[test]
    fn parse_rewritten_in_place_keeps_name_and_types() {
        let mut msg = BytesMut::new();
        encode(
            &Parse::new(Some("s1".into()), "SELECT $1".into(), vec![23, 25]),
            &mut msg,
        )
        .unwrap();
        let (name, query) = parse_name_and_query(&msg).unwrap();
        let mut out = BytesMut::new();
        with_query(&msg, name, query, "SELECT x FROM t WHERE a = $1", &mut out).unwrap();
        let p = Parse::decode(&mut out, &DecodeContext::default())
            .unwrap()
            .unwrap();
        assert_eq!(p.name.as_deref(), Some("s1"));
        assert_eq!(p.query, "SELECT x FROM t WHERE a = $1");
        assert_eq!(p.type_oids, vec![23, 25]);
        assert!(out.is_empty());
        assert!(with_query(&msg[..8], name, query, "x", &mut out).is_err());
    }
}
