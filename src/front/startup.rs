//! Client startup: TLS negotiation, startup-packet validation, SCRAM authentication,
//! upstream connect, then hand-off of the raw socket to the session relay.
//!
//! States: AwaitingSslOrStartup → AwaitingStartup → Authenticating → (upstream connect) →
//! Ready (handed to `session`). Every state is bounded by the handshake timeout.

use std::collections::HashMap;
use std::sync::Arc;

use bytes::BytesMut;
use futures::{SinkExt, StreamExt};
use pgwire::api::auth::driver::AuthOutcome;
use pgwire::api::auth::mechanism::AuthMechanismFactory;
use pgwire::api::auth::{save_startup_parameters_to_metadata, AuthDriver, ServerParameterProvider};
use pgwire::api::{ClientInfo, PgWireConnectionState};
use pgwire::api::{PidSecretKeyGenerator, RandomPidSecretKeyGenerator};
use pgwire::error::ErrorInfo;
use pgwire::messages::response::{ReadyForQuery, TransactionStatus};
use pgwire::messages::startup::{Authentication, BackendKeyData, ParameterStatus};
use pgwire::messages::startup::{NegotiateProtocolVersion, SecretKey, Startup};
use pgwire::messages::ProtocolVersion;
use pgwire::messages::{PgWireBackendMessage, PgWireFrontendMessage};
use pgwire::tokio::server::{negotiate_tls, MaybeTls, PgWireMessageServerCodec};
use tokio::net::TcpStream;
use tokio_util::codec::Framed;

use crate::error::ClientError;
use crate::front::params::{self, Sorted};
use crate::server::Server;
use crate::upstream::pool::PoolKey;
use crate::upstream::{UpstreamConn, UpstreamError};

type Front = Framed<MaybeTls, PgWireMessageServerCodec<()>>;

/// Upstream ParameterStatus values, given to the client after authentication.
struct UpstreamParams(Vec<(String, String)>);

/// Sends the real server's parameters (with identity values replaced by pgveil's).
pub struct RelayParams;

impl ServerParameterProvider for RelayParams {
    fn server_parameters<C: ClientInfo>(&self, client: &C) -> Option<HashMap<String, String>> {
        let params = client.session_extensions().get::<UpstreamParams>()?;
        let user = client.metadata().get("user").cloned().unwrap_or_default();
        let mut map: HashMap<String, String> = params.0.iter().cloned().collect();
        map.insert("session_authorization".into(), user);
        map.insert("is_superuser".into(), "off".into());
        Some(map)
    }
}

/// A fully started session, ready to relay.
pub struct Started {
    pub io: MaybeTls,
    pub read_buf: BytesMut,
    pub user: String,
    pub application_name: String,
    pub upstream: UpstreamConn,
    pub client_key: (i32, SecretKey),
    /// The session thread this session runs on.
    pub shard: usize,
    /// The startup parameters of the upstream session (a pooled one is reused under them).
    pub pool_key: PoolKey,
}

/// What the first packet asked for.
pub enum Handshake {
    Session(Box<Started>),
    Cancel { pid: i32, secret: SecretKey },
    Closed,
}

/// Run the handshake up to a ready session, a cancel request, or a refusal.
pub async fn handshake(
    server: &Arc<Server>,
    tcp: TcpStream,
    reject: Option<ClientError>,
    shard: usize,
) -> Handshake {
    let timeout = server.config.handshake_timeout();
    let inner = handshake_inner(server, tcp, reject, shard);
    match server.timers.timeout(timeout, inner).await {
        Ok(h) => h,
        Err(_) => {
            tracing::debug!("handshake timed out");
            Handshake::Closed
        }
    }
}

async fn handshake_inner(
    server: &Arc<Server>,
    tcp: TcpStream,
    reject: Option<ClientError>,
    shard: usize,
) -> Handshake {
    let Ok(Some(mut front)) = negotiate_tls::<()>(tcp, server.tls_acceptor.clone()).await else {
        return Handshake::Closed;
    };
    match other_major_version(&mut front).await {
        Ok(None) => {}
        Ok(Some((major, minor))) => {
            let why = format!(
                "unsupported frontend protocol {major}.{minor}: server supports 3.0 to 3.2"
            );
            fail(&mut front, ClientError::FeatureUnsupported(why)).await;
            return Handshake::Closed;
        }
        Err(_) => return Handshake::Closed,
    }
    // rebuilt, so that the decoder looks at the bytes read ahead before it reads more
    let mut front = Framed::from_parts(front.into_parts());
    let startup = match front.next().await {
        Some(Ok(PgWireFrontendMessage::Startup(s))) => s,
        Some(Ok(PgWireFrontendMessage::CancelRequest(c))) => {
            return Handshake::Cancel {
                pid: c.pid,
                secret: c.secret_key,
            };
        }
        Some(Ok(_)) => {
            fail(
                &mut front,
                ClientError::Protocol("expected a startup packet".into()),
            )
            .await;
            return Handshake::Closed;
        }
        Some(Err(e)) => {
            tracing::debug!(error = %e, "bad startup packet");
            fail(
                &mut front,
                ClientError::Protocol("invalid startup packet".into()),
            )
            .await;
            return Handshake::Closed;
        }
        None => return Handshake::Closed,
    };
    if let Some(err) = reject {
        fail(&mut front, err).await;
        return Handshake::Closed;
    }
    match authenticate(server, &mut front, &startup, shard).await {
        Ok(auth) => {
            let parts = front.into_parts();
            Handshake::Session(Box::new(Started {
                io: parts.io,
                read_buf: parts.read_buf,
                user: auth.user,
                application_name: auth.application_name,
                upstream: auth.upstream,
                client_key: auth.client_key,
                shard,
                pool_key: auth.pool_key,
            }))
        }
        Err(e) => {
            fail(&mut front, e).await;
            Handshake::Closed
        }
    }
}

/// The protocol version of a startup packet whose major version is not 3 (PostgreSQL refuses
/// it with 0A000; pgwire's decoder would call it an invalid packet, 08P01). Reads the packet's
/// first 8 bytes into the read buffer, ahead of the decoder; special requests (cancel, TLS,
/// GSS: major version 1234) are the decoder's.
async fn other_major_version(front: &mut Front) -> std::io::Result<Option<(u16, u16)>> {
    use tokio::io::AsyncReadExt;
    let mut chunk = [0u8; 8];
    while front.read_buffer().len() < 8 {
        let want = 8 - front.read_buffer().len();
        let n = front.get_mut().read(&mut chunk[..want]).await?;
        if n == 0 {
            return Err(std::io::ErrorKind::UnexpectedEof.into());
        }
        front.read_buffer_mut().extend_from_slice(&chunk[..n]);
    }
    let b = &front.read_buffer()[4..8];
    let major = u16::from_be_bytes([b[0], b[1]]);
    let minor = u16::from_be_bytes([b[2], b[3]]);
    Ok((major != 3 && major != 1234).then_some((major, minor)))
}

async fn fail(front: &mut Front, e: ClientError) {
    let _ = front
        .send(PgWireBackendMessage::ErrorResponse(e.to_error_response()))
        .await;
    let _ = front.close().await;
}

/// Validate the startup packet; returns the user and the parameters sorted into those passed
/// on upstream (with pgveil's own) and the names of those left out.
fn validate_startup(server: &Server, startup: &Startup) -> Result<(String, Sorted), ClientError> {
    let p = &startup.parameters;
    if p.contains_key("replication") {
        return Err(ClientError::FeatureUnsupported(
            "replication connections are not supported by pgveil".into(),
        ));
    }
    let user = p.get("user").filter(|u| !u.is_empty()).ok_or_else(|| {
        ClientError::Protocol("no PostgreSQL user name specified in startup packet".into())
    })?;
    let database = p.get("database").filter(|d| !d.is_empty()).unwrap_or(user);
    if database != &server.config.upstream.database {
        return Err(ClientError::UnknownDatabase(database.clone()));
    }
    if let Some(enc) = p.get("client_encoding") {
        let norm = enc.to_ascii_uppercase().replace(['-', '_'], "");
        if norm != "UTF8" && norm != "UNICODE" {
            return Err(ClientError::Encoding(format!(
                "client_encoding \"{enc}\" is not supported by pgveil; use UTF8"
            )));
        }
    }
    let mut sorted = params::sort(p);
    let fwd = &mut sorted.forwarded;
    fwd.push(("client_encoding".into(), "UTF8".into()));
    fwd.push(("search_path".into(), server.search_path_setting()));
    fwd.push(("standard_conforming_strings".into(), "on".into()));
    fwd.sort(); // also the key under which the upstream session may be pooled
    Ok((user.clone(), sorted))
}

/// The protocol version, as PostgreSQL 18 negotiates it (other major versions are refused
/// before, by `other_major_version`): minor versions up to 3.2 as asked (3.2: longer cancel
/// keys); a client asking for a newer minor version or for protocol options (`_pq_.*`, none
/// of which pgveil knows) is told with NegotiateProtocolVersion what it gets: 3.2 at most,
/// and none of the options.
async fn negotiate_protocol(front: &mut Front, startup: &Startup) -> Result<(), ClientError> {
    let minor = startup.protocol_number_minor;
    let version = if minor >= 2 {
        ProtocolVersion::PROTOCOL3_2
    } else {
        ProtocolVersion::PROTOCOL3_0
    };
    let mut options: Vec<String> = startup
        .parameters
        .keys()
        .filter(|k| k.starts_with("_pq_."))
        .cloned()
        .collect();
    if minor > 2 || !options.is_empty() {
        options.sort();
        let (major, minor) = version.version_number();
        let newest = (i32::from(major) << 16) | i32::from(minor);
        front
            .send(PgWireBackendMessage::NegotiateProtocolVersion(
                NegotiateProtocolVersion::new(newest, options),
            ))
            .await
            .map_err(|_| ClientError::Protocol("could not negotiate the protocol".into()))?;
    }
    front.set_protocol_version(version);
    Ok(())
}

/// A login PostgreSQL refused: its complaint about a setting the client sent (a bad value,
/// an unknown name) is the client's to read, as it would be without pgveil; anything else
/// is PostgreSQL being unavailable (08006, the cause logged, never shown).
fn upstream_refusal(e: UpstreamError) -> ClientError {
    match e {
        UpstreamError::Server { code, message } if code == "22023" => {
            ClientError::BadSetting(message)
        }
        UpstreamError::Server { code, message } if code == "42704" => {
            ClientError::UnknownSetting(message)
        }
        e => {
            tracing::warn!(error = %e, "upstream connect failed");
            ClientError::UpstreamUnavailable
        }
    }
}

/// The warning that names the startup parameters pgveil did not pass on (sent after
/// AuthenticationOk, before ReadyForQuery, where PostgreSQL sends its own startup warnings).
fn left_out_warning(names: &[String]) -> PgWireBackendMessage {
    let mut info = ErrorInfo::new(
        "WARNING".into(),
        "01000".into(),
        format!(
            "pgveil did not pass these startup parameters on to PostgreSQL: {}",
            names.join(", ")
        ),
    );
    info.hint = Some(
        "pgveil pins search_path and passes on only settings a user may change with SET \
         (such as statement_timeout or DateStyle), also from options (-c name=value)"
            .into(),
    );
    PgWireBackendMessage::NoticeResponse(info.into())
}

/// End the login as PostgreSQL ends it: the SASL outcome, AuthenticationOk, the server's
/// parameters (by name, case-insensitively, as PostgreSQL 15 orders them), the cancel key, the warning about startup parameters left out (if any), then
/// ReadyForQuery. The cancel key's pid is the PostgreSQL backend's, as `pg_backend_pid()`
/// shows it (unique among open sessions, so no two sessions can share a key); its secret is
/// pgveil's own, at the length the protocol version asks for.
async fn finish_login(
    front: &mut Front,
    final_message: Option<Authentication>,
    backend_pid: i32,
    left_out: &[String],
) -> Result<(), std::io::Error> {
    if let Some(m) = final_message {
        front.feed(PgWireBackendMessage::Authentication(m)).await?;
    }
    let (_, secret) = RandomPidSecretKeyGenerator::default().generate(front);
    front.set_pid_and_secret_key(backend_pid, secret.clone());
    front
        .feed(PgWireBackendMessage::Authentication(Authentication::Ok))
        .await?;
    let mut params: Vec<_> = RelayParams
        .server_parameters(front)
        .unwrap_or_default()
        .into_iter()
        .collect();
    params.sort_by_cached_key(|(name, _)| name.to_lowercase()); // PostgreSQL's order
    for (name, value) in params {
        let status = ParameterStatus::new(name, value);
        front
            .feed(PgWireBackendMessage::ParameterStatus(status))
            .await?;
    }
    let key = BackendKeyData::new(backend_pid, secret);
    front
        .feed(PgWireBackendMessage::BackendKeyData(key))
        .await?;
    if !left_out.is_empty() {
        front.feed(left_out_warning(left_out)).await?;
    }
    let ready = ReadyForQuery::new(TransactionStatus::Idle);
    front
        .send(PgWireBackendMessage::ReadyForQuery(ready))
        .await?;
    front.set_state(PgWireConnectionState::ReadyForQuery);
    Ok(())
}

struct Authenticated {
    user: String,
    application_name: String,
    upstream: UpstreamConn,
    client_key: (i32, SecretKey),
    pool_key: PoolKey,
}

async fn authenticate(
    server: &Arc<Server>,
    front: &mut Front,
    startup: &Startup,
    shard: usize,
) -> Result<Authenticated, ClientError> {
    if server.require_tls() && !front.is_secure() {
        return Err(ClientError::AuthRejected(
            "pgveil requires TLS: connect with sslmode=require".into(),
        ));
    }
    negotiate_protocol(front, startup).await?;
    let (
        user,
        Sorted {
            forwarded: fwd,
            left_out,
        },
    ) = validate_startup(server, startup)?;
    save_startup_parameters_to_metadata(front, startup);
    let scram = if front.is_secure() {
        &server.scram_tls
    } else {
        &server.scram_plain
    };
    let driver: AuthDriver<RelayParams, String> = AuthDriver::new(RelayParams);
    let auth_failed = || ClientError::AuthFailed(user.clone());
    driver
        .begin_authentication(front, scram.create())
        .await
        .map_err(|_| auth_failed())?;
    loop {
        let msg = match front.next().await {
            Some(Ok(PgWireFrontendMessage::PasswordMessageFamily(m))) => m,
            Some(Ok(_)) | Some(Err(_)) => {
                return Err(ClientError::Protocol("expected a SASL response".into()))
            }
            None => return Err(auth_failed()),
        };
        match driver.advance_authentication(front, msg).await {
            Ok(AuthOutcome::InProgress) => continue,
            Ok(AuthOutcome::Authenticated {
                identity: Some(id),
                final_message,
            }) if id == user => {
                let upstream = server
                    .upstream_session(shard, &fwd)
                    .await
                    .map_err(upstream_refusal)?;
                front
                    .session_extensions()
                    .insert(UpstreamParams(upstream.params.clone()));
                finish_login(front, final_message, upstream.pid, &left_out)
                    .await
                    .map_err(|_| ClientError::Protocol("could not complete startup".into()))?;
                let client_key = front.pid_and_secret_key();
                let application_name = startup
                    .parameters
                    .get("application_name")
                    .cloned()
                    .unwrap_or_default();
                return Ok(Authenticated {
                    user,
                    application_name,
                    upstream,
                    client_key,
                    pool_key: fwd,
                });
            }
            Ok(AuthOutcome::Authenticated { .. }) | Err(_) => return Err(auth_failed()),
        }
    }
}
