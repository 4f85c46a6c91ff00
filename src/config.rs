//! Configuration: a TOML file parsed strictly (unknown keys are errors) and validated into
//! typed values. `pgveil check` reports every problem at once.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

use serde::Deserialize;
use thiserror::Error;

/// Problems found in a configuration file.
#[derive(Debug, Error)]
pub enum ConfigError {
    #[error("cannot read {path}: {source}")]
    Read {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("{0}")]
    Parse(String),
    #[error("invalid configuration:\n  - {}", .0.join("\n  - "))]
    Invalid(Vec<String>),
}

/// The whole configuration file.
#[derive(Debug, Clone, Deserialize, Default)]
#[serde(deny_unknown_fields)]
pub struct Config {
    #[serde(default)]
    pub server: ServerConfig,
    #[serde(default)]
    pub tls: Option<TlsConfig>,
    pub upstream: UpstreamConfig,
    #[serde(default)]
    pub catalog: CatalogConfig,
    #[serde(default)]
    pub password_policy: PasswordPolicy,
    #[serde(default)]
    pub log: LogConfig,
}

/// `[server]`: the client-facing listener.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct ServerConfig {
    pub listen: String,
    pub max_connections: usize,
    pub handshake_timeout_ms: u64,
    pub shutdown_grace_ms: u64,
    pub max_message_bytes: usize,
    pub max_query_bytes: usize,
    pub max_sql_depth: usize,
    pub search_path: Vec<String>,
    pub session_threads: usize,
    /// CPU share of one core a session thread should stay under: sessions are packed onto
    /// as few threads as that allows and spread again as the load grows (0 = off: all
    /// threads in use, sessions stay where they start).
    pub thread_busy_target: f64,
    /// Run restricted users' simple-protocol statements as prepared statements upstream.
    pub prepare_simple_statements: bool,
    /// TCP keepalive idle time of client and upstream sockets (0 = off).
    pub tcp_keepalive_s: u64,
}

impl Default for ServerConfig {
    fn default() -> Self {
        ServerConfig {
            listen: "127.0.0.1:6432".into(),
            max_connections: 500,
            handshake_timeout_ms: 10_000,
            shutdown_grace_ms: 30_000,
            max_message_bytes: 256 * 1024 * 1024,
            max_query_bytes: 1024 * 1024,
            max_sql_depth: 64,
            search_path: vec!["public".into()],
            session_threads: 0,
            thread_busy_target: 0.45,
            prepare_simple_statements: true,
            tcp_keepalive_s: 60,
        }
    }
}

/// `[tls]`: TLS for clients.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TlsConfig {
    pub cert: PathBuf,
    pub key: PathBuf,
    #[serde(default)]
    pub require_tls: bool,
}

/// How pgveil talks TLS to PostgreSQL.
#[derive(Debug, Clone, Copy, Deserialize, PartialEq, Eq, Default)]
#[serde(rename_all = "kebab-case")]
pub enum UpstreamTls {
    #[default]
    Disable,
    /// TLS, certificate verified against `ca_file`.
    VerifyFull,
}

/// `[upstream]`: the real PostgreSQL.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct UpstreamConfig {
    pub host: String,
    #[serde(default = "default_pg_port")]
    pub port: u16,
    pub database: String,
    pub user: String,
    #[serde(default)]
    pub password: Option<String>,
    /// Name of an environment variable holding the password (preferred over `password`).
    #[serde(default)]
    pub password_env: Option<String>,
    #[serde(default)]
    pub tls: UpstreamTls,
    #[serde(default)]
    pub ca_file: Option<PathBuf>,
    #[serde(default = "default_connect_timeout")]
    pub connect_timeout_ms: u64,
    /// Idle upstream sessions kept for reuse after `DISCARD ALL` (0 = every client session
    /// gets a new PostgreSQL session and closes it at the end).
    #[serde(default)]
    pub pool_size: usize,
    /// A pooled upstream session older than this is closed instead of reused.
    #[serde(default = "default_pool_lifetime")]
    pub pool_lifetime_s: u64,
    /// A pooled upstream session idle for longer than this is closed.
    #[serde(default = "default_pool_idle_timeout")]
    pub pool_idle_timeout_s: u64,
}

impl Default for UpstreamConfig {
    fn default() -> Self {
        UpstreamConfig {
            host: String::new(),
            port: default_pg_port(),
            database: String::new(),
            user: String::new(),
            password: None,
            password_env: None,
            tls: UpstreamTls::default(),
            ca_file: None,
            connect_timeout_ms: default_connect_timeout(),
            pool_size: 0,
            pool_lifetime_s: default_pool_lifetime(),
            pool_idle_timeout_s: default_pool_idle_timeout(),
        }
    }
}

fn default_pg_port() -> u16 {
    5432
}
fn default_connect_timeout() -> u64 {
    5_000
}
fn default_pool_lifetime() -> u64 {
    3_600
}
fn default_pool_idle_timeout() -> u64 {
    300
}

/// `[catalog]`: where the policy catalog lives.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct CatalogConfig {
    /// Database holding the `pgveil` schema; defaults to the upstream database.
    pub database: Option<String>,
    /// Cached compiled policies (entries).
    pub cache_capacity: u64,
    /// Cached rewrites (entries).
    pub rewrite_cache_capacity: u64,
}

impl Default for CatalogConfig {
    fn default() -> Self {
        CatalogConfig {
            database: None,
            cache_capacity: 10_000,
            rewrite_cache_capacity: 50_000,
        }
    }
}

/// `[password_policy]`: applied wherever a plaintext password is given.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct PasswordPolicy {
    pub min_length: usize,
    pub require_upper: bool,
    pub require_lower: bool,
    pub require_digit: bool,
    pub require_symbol: bool,
}

impl Default for PasswordPolicy {
    fn default() -> Self {
        PasswordPolicy {
            min_length: 12,
            require_upper: true,
            require_lower: true,
            require_digit: true,
            require_symbol: false,
        }
    }
}

/// `[log]`.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct LogConfig {
    pub level: String,
    /// Log full SQL text (otherwise only a fingerprint).
    pub log_sql: bool,
}

impl Default for LogConfig {
    fn default() -> Self {
        LogConfig {
            level: "info".into(),
            log_sql: false,
        }
    }
}

impl Config {
    /// Read, parse and validate a configuration file.
    pub fn load(path: &Path) -> Result<Config, ConfigError> {
        let text = std::fs::read_to_string(path).map_err(|source| ConfigError::Read {
            path: path.to_owned(),
            source,
        })?;
        let cfg = Self::parse(&text)?;
        let problems = cfg.problems();
        if problems.is_empty() {
            Ok(cfg)
        } else {
            Err(ConfigError::Invalid(problems))
        }
    }

    /// Parse TOML text (no semantic validation).
    pub fn parse(text: &str) -> Result<Config, ConfigError> {
        toml::from_str(text).map_err(|e| ConfigError::Parse(e.to_string()))
    }

    /// Every semantic problem, each naming its key.
    pub fn problems(&self) -> Vec<String> {
        let mut p = Vec::new();
        if self.server.listen.parse::<SocketAddr>().is_err() {
            p.push(format!(
                "server.listen: `{}` is not an address:port",
                self.server.listen
            ));
        }
        if self.server.max_connections == 0 {
            p.push("server.max_connections: must be at least 1".into());
        }
        if self.server.session_threads > 256 {
            p.push("server.session_threads: at most 256 (0 = one per CPU)".into());
        }
        if !(0.0..=1.0).contains(&self.server.thread_busy_target) {
            p.push("server.thread_busy_target: between 0 and 1 (0 = no balancing)".into());
        }
        if self.server.handshake_timeout_ms == 0 {
            p.push("server.handshake_timeout_ms: must be positive".into());
        }
        if self.upstream.connect_timeout_ms == 0
            || self.upstream.connect_timeout_ms >= self.server.handshake_timeout_ms
        {
            // the login waits for the upstream connect: if the handshake timeout came first,
            // a slow PostgreSQL would end logins without an error instead of 08006
            p.push(format!(
                "upstream.connect_timeout_ms: must be positive and below server.handshake_timeout_ms ({})",
                self.server.handshake_timeout_ms
            ));
        }
        if self.server.max_message_bytes < 1024 {
            p.push("server.max_message_bytes: must be at least 1024".into());
        }
        if self.server.max_query_bytes < 64
            || self.server.max_query_bytes > self.server.max_message_bytes
        {
            p.push(
                "server.max_query_bytes: must be between 64 and server.max_message_bytes".into(),
            );
        }
        if self.server.max_sql_depth < 4 {
            p.push("server.max_sql_depth: must be at least 4".into());
        }
        if self.server.search_path.is_empty() {
            p.push("server.search_path: must name at least one schema".into());
        }
        if self.upstream.host.is_empty() {
            p.push("upstream.host: must not be empty".into());
        }
        if self.upstream.database.is_empty() {
            p.push("upstream.database: must not be empty".into());
        }
        if self.upstream.user.is_empty() {
            p.push("upstream.user: must not be empty".into());
        }
        if let Some(var) = &self.upstream.password_env {
            if std::env::var(var).is_err() {
                p.push(format!(
                    "upstream.password_env: environment variable {var} is not set"
                ));
            }
        }
        if self.upstream.pool_size > 10_000 {
            p.push("upstream.pool_size: at most 10000 (0 = no pooling)".into());
        }
        if self.upstream.pool_size > 0 {
            for (key, v) in [
                ("upstream.pool_lifetime_s", self.upstream.pool_lifetime_s),
                (
                    "upstream.pool_idle_timeout_s",
                    self.upstream.pool_idle_timeout_s,
                ),
            ] {
                if v == 0 {
                    p.push(format!("{key}: must be at least 1 second"));
                }
            }
        }
        if self.upstream.tls == UpstreamTls::VerifyFull {
            match &self.upstream.ca_file {
                None => {
                    p.push("upstream.ca_file: required when upstream.tls = \"verify-full\"".into())
                }
                Some(f) if !f.exists() => {
                    p.push(format!("upstream.ca_file: {} does not exist", f.display()))
                }
                _ => {}
            }
        }
        if let Some(tls) = &self.tls {
            for (key, f) in [("tls.cert", &tls.cert), ("tls.key", &tls.key)] {
                if !f.exists() {
                    p.push(format!("{key}: {} does not exist", f.display()));
                }
            }
        }
        if self.password_policy.min_length < 8 {
            p.push("password_policy.min_length: must be at least 8".into());
        }
        if tracing_subscriber::EnvFilter::try_new(&self.log.level).is_err() {
            p.push(format!(
                "log.level: `{}` is not a valid filter",
                self.log.level
            ));
        }
        p
    }

    /// Listen address (validated).
    pub fn listen_addr(&self) -> SocketAddr {
        self.server
            .listen
            .parse()
            .unwrap_or_else(|_| SocketAddr::from(([127, 0, 0, 1], 6432)))
    }

    /// Service-account password, from `password_env` or `password`.
    pub fn upstream_password(&self) -> Option<String> {
        self.upstream
            .password_env
            .as_ref()
            .and_then(|v| std::env::var(v).ok())
            .or_else(|| self.upstream.password.clone())
    }

    /// Database holding the catalog.
    pub fn catalog_database(&self) -> &str {
        self.catalog
            .database
            .as_deref()
            .unwrap_or(&self.upstream.database)
    }

    /// Handshake timeout.
    pub fn handshake_timeout(&self) -> Duration {
        Duration::from_millis(self.server.handshake_timeout_ms)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const MIN: &str = "[upstream]\nhost='127.0.0.1'\ndatabase='crm'\nuser='svc'\n";

    #[test]
    fn minimal_config_is_valid_with_defaults() {
        let c = Config::parse(MIN).unwrap();
        assert!(c.problems().is_empty(), "{:?}", c.problems());
        assert_eq!(c.server.listen, "127.0.0.1:6432");
    }

    #[test]
    fn unknown_key_is_named() {
        let e = Config::parse(&format!("{MIN}bogus=1\n"))
            .unwrap_err()
            .to_string();
        assert!(e.contains("bogus"), "{e}");
        let e = Config::parse(&format!("[server]\nlisten_adress='x'\n{MIN}"))
            .unwrap_err()
            .to_string();
        assert!(e.contains("listen_adress"), "{e}");
    }

    #[test]
    fn all_problems_reported_at_once() {
        let c = Config::parse(&format!(
            "[server]\nlisten='nope'\nmax_connections=0\nsession_threads=1000\nthread_busy_target=2.0\n{MIN}"
        ))
        .unwrap();
        let p = c.problems();
        assert!(p.iter().any(|s| s.starts_with("server.listen")));
        assert!(p.iter().any(|s| s.starts_with("server.max_connections")));
        assert!(p.iter().any(|s| s.starts_with("server.session_threads")));
        assert!(p.iter().any(|s| s.starts_with("server.thread_busy_target")));
    }

    #[test]
    fn the_upstream_connect_times_out_before_the_handshake() {
        let ok = Config::parse(MIN).unwrap();
        assert!(ok.problems().is_empty(), "{:?}", ok.problems());
        for (handshake, connect) in [(10_000, 10_000), (3_000, 5_000), (10_000, 0)] {
            let c = Config::parse(&format!(
                "[server]\nhandshake_timeout_ms={handshake}\n{MIN}connect_timeout_ms={connect}\n"
            ))
            .unwrap();
            assert!(
                c.problems()
                    .iter()
                    .any(|s| s.starts_with("upstream.connect_timeout_ms")),
                "{handshake}/{connect}: {:?}",
                c.problems()
            );
        }
    }

    #[test]
    fn pool_settings_are_checked() {
        let c = Config::parse(MIN).unwrap();
        assert_eq!(c.upstream.pool_size, 0, "pooling is off unless asked for");
        assert_eq!(c.upstream.pool_lifetime_s, 3_600);
        assert_eq!(c.upstream.pool_idle_timeout_s, 300);
        let c = Config::parse(&format!(
            "{MIN}pool_size=20000\npool_lifetime_s=0\npool_idle_timeout_s=0\n"
        ))
        .unwrap();
        let p = c.problems();
        for key in [
            "upstream.pool_size",
            "upstream.pool_lifetime_s",
            "upstream.pool_idle_timeout_s",
        ] {
            assert!(p.iter().any(|s| s.starts_with(key)), "{key}: {p:?}");
        }
    }

    #[test]
    fn example_config_parses() {
        let text = include_str!("../config/pgveil.example.toml");
        let c = Config::parse(text).unwrap();
        assert_eq!(c.upstream.database, "crm");
    }
}
