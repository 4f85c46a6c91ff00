//! An ephemeral PostgreSQL server in a temporary directory.
//!
//! Used by `pgveil demo`, the integration tests and the benchmark harness. It runs the
//! machine's PostgreSQL binaries (`initdb`, `pg_ctl`), listens on 127.0.0.1 on a free port
//! and on a Unix socket inside its own directory, and is stopped and removed on drop.
//! `initdb` refuses to run as root, so when we are root the server runs as `postgres`.

use std::net::TcpListener;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};

use thiserror::Error;

/// Errors starting or stopping the embedded server.
#[derive(Debug, Error)]
pub enum EmbeddedPgError {
    #[error("PostgreSQL binaries not found (looked for initdb in {0}); install postgresql")]
    NoBinaries(String),
    #[error("{step} failed: {detail}")]
    Step { step: &'static str, detail: String },
    #[error("i/o error: {0}")]
    Io(#[from] std::io::Error),
}

/// A running throwaway PostgreSQL cluster.
#[derive(Debug)]
pub struct EmbeddedPg {
    dir: tempfile::TempDir,
    bin: PathBuf,
    port: u16,
    as_postgres: bool,
    /// Superuser name of the cluster.
    pub superuser: String,
    /// Superuser password (password auth over TCP).
    pub password: String,
}

/// Locate the PostgreSQL server binaries.
pub fn find_bin_dir() -> Result<PathBuf, EmbeddedPgError> {
    if let Ok(dir) = std::env::var("PGVEIL_PG_BIN") {
        return Ok(PathBuf::from(dir));
    }
    for v in ["17", "16", "15", "14", "13"] {
        let p = PathBuf::from(format!("/usr/lib/postgresql/{v}/bin"));
        if p.join("initdb").exists() {
            return Ok(p);
        }
    }
    if let Ok(out) = Command::new("pg_config").arg("--bindir").output() {
        let p = PathBuf::from(String::from_utf8_lossy(&out.stdout).trim());
        if p.join("initdb").exists() {
            return Ok(p);
        }
    }
    Err(EmbeddedPgError::NoBinaries(
        "/usr/lib/postgresql/*/bin".into(),
    ))
}

/// Pick a free TCP port on loopback.
pub fn free_port() -> std::io::Result<u16> {
    let l = TcpListener::bind("127.0.0.1:0")?;
    Ok(l.local_addr()?.port())
}

fn is_root() -> bool {
    Command::new("id")
        .arg("-u")
        .output()
        .map(|o| String::from_utf8_lossy(&o.stdout).trim() == "0")
        .unwrap_or(false)
}

impl EmbeddedPg {
    /// Create and start a new cluster. `extra_conf` lines are appended to postgresql.conf.
    pub fn start(extra_conf: &[&str]) -> Result<Self, EmbeddedPgError> {
        let bin = find_bin_dir()?;
        let as_postgres = is_root();
        let dir = tempfile::Builder::new().prefix("pgveil-pg-").tempdir()?;
        let password = format!("pw{}", rand::random::<u64>());
        let superuser = "postgres".to_string();
        if as_postgres {
            run(
                Command::new("chown")
                    .args(["postgres:postgres"])
                    .arg(dir.path()),
                "chown",
            )?;
        }
        let data = dir.path().join("data");
        let pwfile = dir.path().join("pw");
        std::fs::write(&pwfile, &password)?;
        if as_postgres {
            run(
                Command::new("chown")
                    .args(["postgres:postgres"])
                    .arg(&pwfile),
                "chown",
            )?;
        }
        let mut initdb = Self::cmd(as_postgres, &bin.join("initdb"));
        initdb
            .arg("-D")
            .arg(&data)
            .args([
                "-U",
                &superuser,
                "-A",
                "scram-sha-256",
                "-E",
                "UTF8",
                "--no-sync",
            ])
            .args(["--locale=C"])
            .arg(format!("--pwfile={}", pwfile.display()));
        run(&mut initdb, "initdb")?;
        let port = free_port()?;
        let mut conf = format!(
            "\nlisten_addresses = '127.0.0.1'\nport = {port}\nunix_socket_directories = '{}'\n\
             fsync = off\nsynchronous_commit = off\nfull_page_writes = off\nmax_connections = 300\n\
             shared_buffers = 128MB\nlog_min_messages = warning\n",
            dir.path().display()
        );
        for line in extra_conf {
            conf.push_str(line);
            conf.push('\n');
        }
        let conf_path = data.join("postgresql.conf");
        let mut existing = std::fs::read_to_string(&conf_path)?;
        existing.push_str(&conf);
        std::fs::write(&conf_path, existing)?;
        let pg = EmbeddedPg {
            dir,
            bin,
            port,
            as_postgres,
            superuser,
            password,
        };
        pg.pg_ctl_start()?;
        Ok(pg)
    }

    fn cmd(as_postgres: bool, program: &Path) -> Command {
        if as_postgres {
            let mut c = Command::new("runuser");
            c.args(["-u", "postgres", "--"]).arg(program);
            c
        } else {
            Command::new(program)
        }
    }

    fn data_dir(&self) -> PathBuf {
        self.dir.path().join("data")
    }

    /// Start (or restart after [`EmbeddedPg::stop`]) the server and wait until it accepts.
    pub fn pg_ctl_start(&self) -> Result<(), EmbeddedPgError> {
        let log = self.dir.path().join("server.log");
        let mut c = Self::cmd(self.as_postgres, &self.bin.join("pg_ctl"));
        c.arg("-D")
            .arg(self.data_dir())
            .arg("-l")
            .arg(&log)
            .args(["-w", "-t", "60", "start"]);
        run(&mut c, "pg_ctl start")
    }

    /// Stop the server (fast mode), keeping the data directory.
    pub fn stop(&self) -> Result<(), EmbeddedPgError> {
        let mut c = Self::cmd(self.as_postgres, &self.bin.join("pg_ctl"));
        c.arg("-D")
            .arg(self.data_dir())
            .args(["-m", "fast", "-w", "stop"]);
        run(&mut c, "pg_ctl stop")
    }

    /// TCP port on 127.0.0.1.
    pub fn port(&self) -> u16 {
        self.port
    }

    /// Directory holding the Unix socket.
    pub fn socket_dir(&self) -> &Path {
        self.dir.path()
    }

    /// Directory holding the server binaries.
    pub fn bin_dir(&self) -> &Path {
        &self.bin
    }

    /// A tokio-postgres connection string for the superuser.
    pub fn conn_str(&self, db: &str) -> String {
        format!(
            "host=127.0.0.1 port={} user={} password={} dbname={db}",
            self.port, self.superuser, self.password
        )
    }

    /// Run SQL through psql as the superuser (used for seeding).
    pub fn psql(&self, db: &str, sql: &str) -> Result<String, EmbeddedPgError> {
        let out = Command::new(self.bin.join("psql"))
            .args(["-X", "-q", "-v", "ON_ERROR_STOP=1", "-h", "127.0.0.1"])
            .arg("-p")
            .arg(self.port.to_string())
            .args(["-U", &self.superuser, "-d", db, "-c", sql])
            .env("PGPASSWORD", &self.password)
            .stdin(Stdio::null())
            .output()?;
        if !out.status.success() {
            return Err(EmbeddedPgError::Step {
                step: "psql",
                detail: String::from_utf8_lossy(&out.stderr).into_owned(),
            });
        }
        Ok(String::from_utf8_lossy(&out.stdout).into_owned())
    }
}

impl Drop for EmbeddedPg {
    fn drop(&mut self) {
        let _ = self.stop();
    }
}

fn run(c: &mut Command, step: &'static str) -> Result<(), EmbeddedPgError> {
    let out = c.stdin(Stdio::null()).output()?;
    if out.status.success() {
        Ok(())
    } else {
        Err(EmbeddedPgError::Step {
            step,
            detail: format!(
                "{}{}",
                String::from_utf8_lossy(&out.stdout),
                String::from_utf8_lossy(&out.stderr)
            ),
        })
    }
}
