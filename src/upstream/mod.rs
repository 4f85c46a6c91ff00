//! Connecting to the real PostgreSQL with the service account: TLS (optional), startup,
//! SCRAM/MD5/cleartext authentication, collecting ParameterStatus and BackendKeyData.
//! The protocol pieces come from `postgres-protocol`; after startup the stream is handed
//! to the session relay as raw bytes.

use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::BytesMut;
use fallible_iterator::FallibleIterator;
use pgwire::tokio::tokio_rustls::rustls;
use pgwire::tokio::tokio_rustls::TlsConnector;
use postgres_protocol::authentication::sasl::{self, ChannelBinding, ScramSha256};
use postgres_protocol::message::backend::Message;
use postgres_protocol::message::frontend;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio_util::either::Either;

use crate::config::{Config, UpstreamTls};
use crate::timers::Timers;

pub mod pool;

/// A byte stream to PostgreSQL, plain or TLS.
pub type UpStream = Either<TcpStream, pgwire::tokio::tokio_rustls::client::TlsStream<TcpStream>>;

/// Upstream failures (never shown verbatim to clients).
#[derive(Debug, thiserror::Error)]
pub enum UpstreamError {
    #[error("i/o: {0}")]
    Io(#[from] std::io::Error),
    #[error("timed out connecting to PostgreSQL")]
    Timeout,
    #[error("PostgreSQL refused TLS")]
    TlsRefused,
    #[error("TLS setup: {0}")]
    Tls(String),
    #[error("PostgreSQL asked for an unsupported authentication method")]
    UnsupportedAuth,
    #[error("no password configured for the service account")]
    NoPassword,
    #[error("PostgreSQL error {code}: {message}")]
    Server { code: String, message: String },
    #[error("unexpected message during startup")]
    Unexpected,
}

/// Everything learned during the upstream handshake.
pub struct UpstreamConn {
    pub stream: UpStream,
    /// ParameterStatus values in arrival order.
    pub params: Vec<(String, String)>,
    pub pid: i32,
    pub secret: i32,
    /// Bytes already read past ReadyForQuery (normally empty).
    pub leftover: BytesMut,
    /// When the PostgreSQL session was started (pooled sessions have a lifetime).
    pub born: Instant,
}

/// An upstream session off any runtime (plain TCP only), for another session thread to
/// register with its own reactor.
pub struct DetachedConn {
    tcp: std::net::TcpStream,
    params: Vec<(String, String)>,
    pid: i32,
    secret: i32,
    leftover: BytesMut,
    born: Instant,
}

impl UpstreamConn {
    /// Take the socket off this thread's reactor; only a plain TCP session can move.
    pub fn detach(self) -> std::io::Result<DetachedConn> {
        let Either::Left(tcp) = self.stream else {
            return Err(std::io::Error::other("only plain TCP sessions move"));
        };
        Ok(DetachedConn {
            tcp: tcp.into_std()?,
            params: self.params,
            pid: self.pid,
            secret: self.secret,
            leftover: self.leftover,
            born: self.born,
        })
    }
}

impl DetachedConn {
    /// Register the socket with the current thread's reactor.
    pub fn attach(self) -> std::io::Result<UpstreamConn> {
        Ok(UpstreamConn {
            stream: Either::Left(TcpStream::from_std(self.tcp)?),
            params: self.params,
            pid: self.pid,
            secret: self.secret,
            leftover: self.leftover,
            born: self.born,
        })
    }
}

/// How to reach PostgreSQL; built once from the config.
#[derive(Clone)]
pub struct UpstreamTarget {
    pub host: String,
    pub port: u16,
    pub user: String,
    password: Option<String>,
    tls: Option<(TlsConnector, rustls::pki_types::ServerName<'static>)>,
    pub connect_timeout: Duration,
    /// `server.tcp_keepalive_s`.
    keepalive_s: u64,
    /// Where the connect and cancel timeouts run (session threads have no time driver).
    timers: Timers,
}

impl std::fmt::Debug for UpstreamTarget {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("UpstreamTarget")
            .field("host", &self.host)
            .field("port", &self.port)
            .field("user", &self.user)
            .field("tls", &self.tls.is_some())
            .finish()
    }
}

impl UpstreamTarget {
    /// Build from config (loads the CA file for verify-full).
    pub fn from_config(cfg: &Config) -> Result<Self, UpstreamError> {
        let tls = match cfg.upstream.tls {
            UpstreamTls::Disable => None,
            UpstreamTls::VerifyFull => Some(tls_connector(cfg)?),
        };
        Ok(UpstreamTarget {
            host: cfg.upstream.host.clone(),
            port: cfg.upstream.port,
            user: cfg.upstream.user.clone(),
            password: cfg.upstream_password(),
            tls,
            connect_timeout: Duration::from_millis(cfg.upstream.connect_timeout_ms),
            keepalive_s: cfg.server.tcp_keepalive_s,
            timers: Timers::current(),
        })
    }

    /// Open a TCP (and maybe TLS) stream.
    pub async fn open_stream(&self) -> Result<UpStream, UpstreamError> {
        let connect = TcpStream::connect((self.host.as_str(), self.port));
        let tcp = self
            .timers
            .timeout(self.connect_timeout, connect)
            .await
            .map_err(|_| UpstreamError::Timeout)??;
        crate::net::tune(&tcp, self.keepalive_s)?;
        match &self.tls {
            None => Ok(Either::Left(tcp)),
            Some((connector, name)) => {
                let mut tcp = tcp;
                let mut buf = BytesMut::new();
                frontend::ssl_request(&mut buf);
                tcp.write_all(&buf).await?;
                let mut answer = [0u8; 1];
                tcp.read_exact(&mut answer).await?;
                if answer[0] != b'S' {
                    return Err(UpstreamError::TlsRefused);
                }
                let tls = connector.connect(name.clone(), tcp).await?;
                Ok(Either::Right(tls))
            }
        }
    }

    /// Connect and complete startup with the given startup parameters.
    pub async fn connect(
        &self,
        database: &str,
        params: &[(String, String)],
    ) -> Result<UpstreamConn, UpstreamError> {
        let fut = self.connect_inner(database, params);
        self.timers
            .timeout(self.connect_timeout, fut)
            .await
            .map_err(|_| UpstreamError::Timeout)?
    }

    async fn connect_inner(
        &self,
        database: &str,
        params: &[(String, String)],
    ) -> Result<UpstreamConn, UpstreamError> {
        let mut stream = self.open_stream().await?;
        let mut buf = BytesMut::new();
        let mut all: Vec<(&str, &str)> = vec![("user", self.user.as_str()), ("database", database)];
        all.extend(params.iter().map(|(k, v)| (k.as_str(), v.as_str())));
        frontend::startup_message(all, &mut buf)?;
        stream.write_all(&buf).await?;
        let mut rd = BytesMut::with_capacity(8192);
        let mut scram: Option<ScramSha256> = None;
        let mut out = UpstreamConn {
            stream,
            params: Vec::new(),
            pid: 0,
            secret: 0,
            leftover: BytesMut::new(),
            born: Instant::now(),
        };
        loop {
            let msg = next_message(&mut out.stream, &mut rd).await?;
            match msg {
                Message::AuthenticationOk => {}
                Message::AuthenticationCleartextPassword => {
                    let pw = self.password.as_deref().ok_or(UpstreamError::NoPassword)?;
                    send(&mut out.stream, |b| {
                        frontend::password_message(pw.as_bytes(), b)
                    })
                    .await?;
                }
                Message::AuthenticationMd5Password(body) => {
                    let pw = self.password.as_deref().ok_or(UpstreamError::NoPassword)?;
                    let hash = postgres_protocol::authentication::md5_hash(
                        self.user.as_bytes(),
                        pw.as_bytes(),
                        body.salt(),
                    );
                    send(&mut out.stream, |b| {
                        frontend::password_message(hash.as_bytes(), b)
                    })
                    .await?;
                }
                Message::AuthenticationSasl(body) => {
                    let pw = self.password.as_deref().ok_or(UpstreamError::NoPassword)?;
                    let mut has_scram = false;
                    let mut mechs = body.mechanisms();
                    while let Some(m) = mechs.next()? {
                        has_scram |= m == sasl::SCRAM_SHA_256;
                    }
                    if !has_scram {
                        return Err(UpstreamError::UnsupportedAuth);
                    }
                    let s = ScramSha256::new(pw.as_bytes(), ChannelBinding::unsupported());
                    send(&mut out.stream, |b| {
                        frontend::sasl_initial_response(sasl::SCRAM_SHA_256, s.message(), b)
                    })
                    .await?;
                    scram = Some(s);
                }
                Message::AuthenticationSaslContinue(body) => {
                    let s = scram.as_mut().ok_or(UpstreamError::Unexpected)?;
                    s.update(body.data())?;
                    let m = s.message().to_vec();
                    send(&mut out.stream, |b| frontend::sasl_response(&m, b)).await?;
                }
                Message::AuthenticationSaslFinal(body) => {
                    scram
                        .as_mut()
                        .ok_or(UpstreamError::Unexpected)?
                        .finish(body.data())?;
                }
                Message::ParameterStatus(body) => {
                    out.params
                        .push((body.name()?.to_owned(), body.value()?.to_owned()));
                }
                Message::BackendKeyData(body) => {
                    out.pid = body.process_id();
                    out.secret = body.secret_key();
                }
                Message::NoticeResponse(_) => {}
                Message::ReadyForQuery(_) => {
                    out.leftover = rd;
                    return Ok(out);
                }
                Message::ErrorResponse(body) => return Err(server_error(&body)),
                _ => return Err(UpstreamError::UnsupportedAuth),
            }
        }
    }

    /// Send a CancelRequest for an upstream backend on a fresh connection.
    pub async fn cancel(&self, pid: i32, secret: i32) -> Result<(), UpstreamError> {
        let mut s = self.open_stream().await?;
        let mut buf = BytesMut::new();
        frontend::cancel_request(pid, secret, &mut buf);
        s.write_all(&buf).await?;
        s.flush().await?;
        // PostgreSQL closes the connection without answering.
        let mut sink = [0u8; 16];
        let _ = self
            .timers
            .timeout(Duration::from_secs(2), s.read(&mut sink))
            .await;
        Ok(())
    }
}

fn server_error(body: &postgres_protocol::message::backend::ErrorResponseBody) -> UpstreamError {
    let mut code = String::new();
    let mut message = String::new();
    let mut fields = body.fields();
    while let Ok(Some(f)) = fields.next() {
        match f.type_() {
            b'C' => code = String::from_utf8_lossy(f.value_bytes()).into_owned(),
            b'M' => message = String::from_utf8_lossy(f.value_bytes()).into_owned(),
            _ => {}
        }
    }
    UpstreamError::Server { code, message }
}

async fn send<F>(s: &mut UpStream, f: F) -> Result<(), UpstreamError>
where
    F: FnOnce(&mut BytesMut) -> std::io::Result<()>,
{
    let mut buf = BytesMut::new();
    f(&mut buf)?;
    s.write_all(&buf).await?;
    Ok(())
}

async fn next_message(s: &mut UpStream, rd: &mut BytesMut) -> Result<Message, UpstreamError> {
    loop {
        if let Some(m) = Message::parse(rd)? {
            return Ok(m);
        }
        if rd.len() > 1 << 20 {
            return Err(UpstreamError::Unexpected);
        }
        if s.read_buf(rd).await? == 0 {
            return Err(UpstreamError::Io(std::io::ErrorKind::UnexpectedEof.into()));
        }
    }
}

fn tls_connector(
    cfg: &Config,
) -> Result<(TlsConnector, rustls::pki_types::ServerName<'static>), UpstreamError> {
    use rustls::pki_types::pem::PemObject;
    use rustls::pki_types::CertificateDer;
    let ca = cfg
        .upstream
        .ca_file
        .as_ref()
        .ok_or_else(|| UpstreamError::Tls("ca_file missing".into()))?;
    let mut roots = rustls::RootCertStore::empty();
    for cert in CertificateDer::pem_file_iter(ca).map_err(|e| UpstreamError::Tls(e.to_string()))? {
        let cert = cert.map_err(|e| UpstreamError::Tls(e.to_string()))?;
        roots
            .add(cert)
            .map_err(|e| UpstreamError::Tls(e.to_string()))?;
    }
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let config = rustls::ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .map_err(|e| UpstreamError::Tls(e.to_string()))?
        .with_root_certificates(roots)
        .with_no_client_auth();
    let name = rustls::pki_types::ServerName::try_from(cfg.upstream.host.clone())
        .map_err(|e| UpstreamError::Tls(e.to_string()))?;
    Ok((TlsConnector::from(Arc::new(config)), name))
}
