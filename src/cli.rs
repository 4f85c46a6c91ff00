//! Command line: serve, check, init, user passwd, explain, policy apply/export, demo.

use std::path::PathBuf;
use std::process::ExitCode;

use clap::{Parser, Subcommand};

use crate::config::Config;

#[derive(Debug, Parser)]
#[command(
    name = "pgveil",
    version,
    about = "PostgreSQL proxy enforcing CRM roles and permissions"
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Run the proxy.
    Serve {
        #[arg(long, default_value = "config/pgveil.toml")]
        config: PathBuf,
    },
    /// Validate a configuration file and report every problem.
    Check {
        #[arg(long, default_value = "config/pgveil.toml")]
        config: PathBuf,
    },
    /// Create or migrate the policy catalog (schema `pgveil`).
    Init {
        #[arg(long, default_value = "config/pgveil.toml")]
        config: PathBuf,
    },
    /// Manage users.
    User {
        #[command(subcommand)]
        command: UserCommand,
    },
    /// Print a user's effective permissions and why.
    Explain {
        #[arg(long)]
        user: String,
        /// Client address to evaluate conditional assignments with.
        #[arg(long)]
        ip: Option<std::net::IpAddr>,
        #[arg(long, default_value = "config/pgveil.toml")]
        config: PathBuf,
    },
    /// Policy as code.
    Policy {
        #[command(subcommand)]
        command: PolicyCommand,
    },
    /// Start an ephemeral PostgreSQL with a sample CRM and pgveil in front of it.
    Demo {
        #[arg(long, default_value_t = 6432)]
        port: u16,
    },
}

#[derive(Debug, Subcommand)]
enum UserCommand {
    /// Set a user's password (read from stdin); stores only a SCRAM verifier.
    Passwd {
        name: String,
        #[arg(long, default_value = "config/pgveil.toml")]
        config: PathBuf,
    },
}

#[derive(Debug, Subcommand)]
enum PolicyCommand {
    /// Load a policy file into the catalog (idempotent).
    Apply {
        file: PathBuf,
        #[arg(long)]
        dry_run: bool,
        #[arg(long, default_value = "config/pgveil.toml")]
        config: PathBuf,
    },
    /// Write the catalog out as a policy file.
    Export {
        #[arg(long, default_value = "config/pgveil.toml")]
        config: PathBuf,
    },
}

/// Entry point used by `main`.
pub fn main() -> ExitCode {
    let cli = Cli::parse();
    if let Command::Check { config } = &cli.command {
        return check(config);
    }
    let runtime = match tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
    {
        Ok(r) => r,
        Err(e) => {
            eprintln!("pgveil: cannot start runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    match runtime.block_on(run(cli.command)) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("pgveil: {e:#}");
            ExitCode::FAILURE
        }
    }
}

fn check(path: &std::path::Path) -> ExitCode {
    match Config::load(path) {
        Ok(_) => {
            println!("{}: ok", path.display());
            ExitCode::SUCCESS
        }
        Err(e) => {
            eprintln!("{}: {e}", path.display());
            ExitCode::FAILURE
        }
    }
}

async fn run(command: Command) -> anyhow::Result<()> {
    match command {
        Command::Check { .. } => Ok(()),
        Command::Serve { config } => {
            let cfg = Config::load(&config)?;
            crate::logging::init(&cfg.log.level);
            let running = crate::server::start(cfg).await?;
            wait_for_signal().await;
            tracing::info!(
                "shutting down: no new connections; waiting for sessions (a second signal ends them now)"
            );
            let server = running.server.clone();
            let stopped = running.shutdown();
            tokio::pin!(stopped);
            tokio::select! {
                () = &mut stopped => {}
                () = wait_for_signal() => {
                    let open = server.active_sessions();
                    tracing::warn!(open, "second signal: ending open sessions now");
                    server.stopping.cancel();
                    stopped.await;
                }
            }
            Ok(())
        }
        Command::Init { config } => {
            let cfg = Config::load(&config)?;
            let mut client = crate::control::connect(&cfg, cfg.catalog_database(), None).await?;
            let applied = crate::policy::migrate::migrate(&mut client).await?;
            if applied.is_empty() {
                println!(
                    "catalog is up to date (version {})",
                    crate::policy::migrate::latest_version()
                );
            } else {
                println!("applied catalog migrations {applied:?}");
            }
            if crate::control::relations_tracked(&cfg, &client).await? {
                println!(
                    "DDL event trigger pgveil_ddl is enabled: structure changes reload the policy"
                );
            } else {
                println!(
                    "note: structure changes upstream do not reload the policy (the DDL event trigger \
                     needs a superuser running `pgveil init`, and the catalog in the upstream \
                     database); pgveil then reads every protected table through policy subqueries"
                );
            }
            Ok(())
        }
        Command::User {
            command: UserCommand::Passwd { name, config },
        } => {
            let cfg = Config::load(&config)?;
            let mut password = String::new();
            std::io::stdin().read_line(&mut password)?;
            let password = password.trim_end_matches(['\n', '\r']);
            crate::policy::password::check_policy(&cfg.password_policy, password)
                .map_err(anyhow::Error::msg)?;
            let client = crate::control::connect(&cfg, cfg.catalog_database(), None).await?;
            let n = client
                .execute(
                    "UPDATE pgveil.users SET password_verifier = $2 WHERE name = $1",
                    &[&name, &crate::policy::password::make_verifier(password)],
                )
                .await?;
            anyhow::ensure!(n == 1, "no such user: {name}");
            println!("password set for {name}");
            Ok(())
        }
        Command::Explain { user, ip, config } => {
            let cfg = Config::load(&config)?;
            let store = crate::control::initial_store(&cfg).await?;
            print!(
                "{}",
                crate::policy::compile::explain(&store.snapshot(), &user, chrono::Utc::now(), ip)
            );
            Ok(())
        }
        Command::Policy { command } => crate::policy::file::command(command_args(command)).await,
        Command::Demo { port } => crate::demo::run(port).await,
    }
}

fn command_args(c: PolicyCommand) -> crate::policy::file::PolicyArgs {
    match c {
        PolicyCommand::Apply {
            file,
            dry_run,
            config,
        } => crate::policy::file::PolicyArgs::Apply {
            file,
            dry_run,
            config,
        },
        PolicyCommand::Export { config } => crate::policy::file::PolicyArgs::Export { config },
    }
}

/// SIGTERM or Ctrl-C.
pub async fn wait_for_signal() {
    #[cfg(unix)]
    {
        let mut term =
            match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
                Ok(s) => s,
                Err(_) => {
                    let _ = tokio::signal::ctrl_c().await;
                    return;
                }
            };
        tokio::select! {
            _ = term.recv() => {}
            _ = tokio::signal::ctrl_c() => {}
        }
    }
    #[cfg(not(unix))]
    {
        let _ = tokio::signal::ctrl_c().await;
    }
}
