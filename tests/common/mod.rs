//! Shared integration-test harness: a real PostgreSQL (initdb in a temp dir, free port), the
//! demo CRM and policy, and pgveil in-process on a free port. Clients connect over TCP.
#![allow(dead_code)]

use pgveil::config::Config;
use pgveil::embedded_pg::EmbeddedPg;
use pgveil::server::Running;
use tokio_postgres::{Client, NoTls};

pub struct Env {
    pub pg: EmbeddedPg,
    pub cfg: Config,
    pub running: Running,
}

impl Env {
    pub async fn start() -> Env {
        Self::start_with(|_| {}).await
    }

    pub async fn start_with(tweak: impl FnOnce(&mut Config)) -> Env {
        let pg = tokio::task::spawn_blocking(|| EmbeddedPg::start(&[]))
            .await
            .unwrap()
            .expect("start PostgreSQL");
        let mut cfg = pgveil::demo::config_for(&pg, "127.0.0.1:0");
        pgveil::demo::provision(&pg, &cfg)
            .await
            .expect("provision demo");
        tweak(&mut cfg);
        let running = pgveil::server::start(cfg.clone())
            .await
            .expect("start pgveil");
        Env { pg, cfg, running }
    }

    pub fn port(&self) -> u16 {
        self.running.addr.port()
    }

    pub fn conn_str(&self, user: &str) -> String {
        format!(
            "host=127.0.0.1 port={} user={user} password={} dbname=crm",
            self.port(),
            pgveil::demo::password(user)
        )
    }

    /// Connect through pgveil as a demo user.
    pub async fn connect(&self, user: &str) -> Client {
        self.try_connect(user)
            .await
            .unwrap_or_else(|e| panic!("connect as {user}: {e}"))
    }

    pub async fn try_connect(&self, user: &str) -> Result<Client, tokio_postgres::Error> {
        connect_str(&self.conn_str(user)).await
    }

    /// Connect directly to PostgreSQL as superuser (ground truth).
    pub async fn direct(&self) -> Client {
        connect_str(&self.pg.conn_str("crm"))
            .await
            .expect("direct connect")
    }

    /// Run psql through pgveil as `user`; returns (success, stdout, stderr).
    pub fn psql(&self, user: &str, args: &[&str], stdin: Option<&str>) -> (bool, String, String) {
        use std::io::Write;
        let mut cmd = std::process::Command::new(self.pg.bin_dir().join("psql"));
        cmd.args([
            "-X",
            "-h",
            "127.0.0.1",
            "-p",
            &self.port().to_string(),
            "-U",
            user,
            "-d",
            "crm",
        ])
        .args(args)
        .env("PGPASSWORD", pgveil::demo::password(user))
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped());
        let mut child = cmd.spawn().expect("spawn psql");
        if let Some(input) = stdin {
            child
                .stdin
                .take()
                .unwrap()
                .write_all(input.as_bytes())
                .unwrap();
        } else {
            drop(child.stdin.take());
        }
        let out = child.wait_with_output().unwrap();
        (
            out.status.success(),
            String::from_utf8_lossy(&out.stdout).into_owned(),
            String::from_utf8_lossy(&out.stderr).into_owned(),
        )
    }
}

pub async fn connect_str(s: &str) -> Result<Client, tokio_postgres::Error> {
    let (client, conn) = tokio_postgres::connect(s, NoTls).await?;
    tokio::spawn(async move {
        let _ = conn.await;
    });
    Ok(client)
}

/// SQLSTATE of an error, as a string.
pub fn code(e: &tokio_postgres::Error) -> String {
    e.code()
        .map(|c| c.code().to_owned())
        .unwrap_or_else(|| format!("no sqlstate: {e}"))
}

/// Run `sql` with the simple protocol, expecting it to fail with SQLSTATE `expected`; the
/// error, for further checks.
pub async fn expect_code(c: &Client, sql: &str, expected: &str) -> tokio_postgres::Error {
    match c.simple_query(sql).await {
        Ok(_) => panic!("{sql}: expected {expected}, but it succeeded"),
        Err(e) => {
            assert_eq!(code(&e), expected, "{sql}: {e:?}");
            e
        }
    }
}

/// Like [`expect_code`], with the extended protocol (no parameters).
pub async fn expect_code_extended(c: &Client, sql: &str, expected: &str) -> tokio_postgres::Error {
    match c.query(sql, &[]).await {
        Ok(_) => panic!("{sql}: expected {expected}, but it succeeded"),
        Err(e) => {
            assert_eq!(code(&e), expected, "{sql}: {e:?}");
            e
        }
    }
}

/// Message of a database error.
pub fn message(e: &tokio_postgres::Error) -> String {
    e.as_db_error()
        .map(|d| d.message().to_owned())
        .unwrap_or_else(|| e.to_string())
}

/// The SCRAM verifier pgveil stores for `user` (read directly from the catalog).
pub async fn verifier(direct: &Client, user: &str) -> String {
    direct
        .query_one(
            "SELECT password_verifier FROM pgveil.users WHERE name = $1",
            &[&user],
        )
        .await
        .unwrap()
        .get(0)
}

/// All bytes of a `COPY … TO STDOUT`.
pub async fn copy_out_bytes(c: &Client, sql: &str) -> Vec<u8> {
    use futures::StreamExt;
    let s = c
        .copy_out(sql)
        .await
        .unwrap_or_else(|e| panic!("{sql}: {e}"));
    futures::pin_mut!(s);
    let mut out = Vec::new();
    while let Some(chunk) = s.next().await {
        out.extend_from_slice(&chunk.unwrap());
    }
    out
}

/// A client speaking the protocol message by message (for what drivers do not expose, such as
/// choosing prepared-statement names): logged in with SCRAM-SHA-256 and ready for queries.
pub struct RawClient {
    stream: tokio::net::TcpStream,
    buf: bytes::BytesMut,
    /// The pid of the cancel key (BackendKeyData) the login ended with.
    pub pid: i32,
    /// The messages of the notices that came during login, before ReadyForQuery.
    pub login_notices: Vec<String>,
    /// The names of the ParameterStatus messages of the login, in their order.
    pub login_parameters: Vec<String>,
}

impl RawClient {
    pub async fn login(port: u16, user: &str) -> RawClient {
        Self::login_with(port, user, &[]).await
    }

    /// Log in with more startup parameters.
    pub async fn login_with(port: u16, user: &str, params: &[(&str, &str)]) -> RawClient {
        use fallible_iterator::FallibleIterator;
        use postgres_protocol::authentication::sasl::{ChannelBinding, ScramSha256};
        use postgres_protocol::message::backend::Message;
        use postgres_protocol::message::frontend;
        let stream = tokio::net::TcpStream::connect(("127.0.0.1", port))
            .await
            .unwrap();
        let mut c = RawClient {
            stream,
            buf: bytes::BytesMut::new(),
            pid: 0,
            login_notices: Vec::new(),
            login_parameters: Vec::new(),
        };
        let mut out = bytes::BytesMut::new();
        let login = [("user", user), ("database", "crm")];
        frontend::startup_message(login.iter().chain(params).copied(), &mut out).unwrap();
        c.send(&out).await;
        let password = pgveil::demo::password(user);
        let mut scram = ScramSha256::new(password.as_bytes(), ChannelBinding::unsupported());
        loop {
            match c.next().await {
                Message::AuthenticationSasl(_) => {
                    let mut out = bytes::BytesMut::new();
                    frontend::sasl_initial_response("SCRAM-SHA-256", scram.message(), &mut out)
                        .unwrap();
                    c.send(&out).await;
                }
                Message::AuthenticationSaslContinue(b) => {
                    scram.update(b.data()).unwrap();
                    let mut out = bytes::BytesMut::new();
                    frontend::sasl_response(scram.message(), &mut out).unwrap();
                    c.send(&out).await;
                }
                Message::AuthenticationSaslFinal(b) => scram.finish(b.data()).unwrap(),
                Message::BackendKeyData(k) => c.pid = k.process_id(),
                Message::ParameterStatus(p) => c.login_parameters.push(p.name().unwrap().into()),
                Message::NoticeResponse(n) => {
                    let mut fields = n.fields();
                    while let Some(f) = fields.next().unwrap() {
                        if f.type_() == b'M' {
                            c.login_notices
                                .push(String::from_utf8_lossy(f.value_bytes()).into());
                        }
                    }
                }
                Message::ReadyForQuery(_) => return c,
                Message::ErrorResponse(_) => panic!("login as {user} failed"),
                _ => {}
            }
        }
    }

    pub async fn send(&mut self, bytes: &[u8]) {
        use tokio::io::AsyncWriteExt;
        self.stream.write_all(bytes).await.unwrap();
    }

    /// The next backend message.
    pub async fn next(&mut self) -> postgres_protocol::message::backend::Message {
        use tokio::io::AsyncReadExt;
        loop {
            if let Some(m) =
                postgres_protocol::message::backend::Message::parse(&mut self.buf).unwrap()
            {
                return m;
            }
            let n = tokio::time::timeout(
                std::time::Duration::from_secs(10),
                self.stream.read_buf(&mut self.buf),
            )
            .await
            .expect("backend answered")
            .unwrap();
            assert!(n > 0, "connection closed");
        }
    }

    /// Tags of the messages up to and including ReadyForQuery, with the SQLSTATE of errors
    /// (`E42501`) and the status of ReadyForQuery (`ZI`).
    pub async fn until_ready(&mut self) -> Vec<String> {
        use fallible_iterator::FallibleIterator;
        use postgres_protocol::message::backend::Message;
        let mut tags = Vec::new();
        loop {
            let m = self.next().await;
            let tag = match &m {
                Message::ParseComplete => "1".to_owned(),
                Message::BindComplete => "2".to_owned(),
                Message::CloseComplete => "3".to_owned(),
                Message::NoData => "n".to_owned(),
                Message::RowDescription(_) => "T".to_owned(),
                Message::DataRow(_) => "D".to_owned(),
                Message::CommandComplete(_) => "C".to_owned(),
                Message::ErrorResponse(e) => {
                    let mut fields = e.fields();
                    let mut code = String::new();
                    while let Some(f) = fields.next().unwrap() {
                        if f.type_() == b'C' {
                            code = String::from_utf8_lossy(f.value_bytes()).into_owned();
                        }
                    }
                    format!("E{code}")
                }
                Message::ReadyForQuery(r) => format!("Z{}", r.status() as char),
                _ => "?".to_owned(),
            };
            let done = tag.starts_with('Z');
            tags.push(tag);
            if done {
                return tags;
            }
        }
    }
}

/// The first column of every row of `sql` (extended protocol), as text values.
/// The one int8 value a statement returns (a count); panics with the statement on error.
pub async fn scalar(c: &Client, sql: &str) -> i64 {
    c.query_one(sql, &[])
        .await
        .unwrap_or_else(|e| panic!("{sql}: {e}"))
        .get(0)
}

pub async fn first_column(c: &Client, sql: &str) -> Vec<String> {
    c.query(sql, &[])
        .await
        .unwrap_or_else(|e| panic!("{sql}: {e}"))
        .iter()
        .map(|r| r.get(0))
        .collect()
}

/// Every row of every result of a simple query (cells as text, NULL as None), or the SQLSTATE.
pub async fn simple_rows(c: &Client, sql: &str) -> Result<Vec<Vec<Option<String>>>, String> {
    let msgs = c.simple_query(sql).await.map_err(|e| code(&e))?;
    Ok(msgs
        .iter()
        .filter_map(|m| match m {
            tokio_postgres::SimpleQueryMessage::Row(r) => {
                Some((0..r.len()).map(|i| r.get(i).map(str::to_owned)).collect())
            }
            _ => None,
        })
        .collect())
}
