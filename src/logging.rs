//! Logging set-up for `serve` and `demo`: `tracing` to standard output, filtered by
//! `log.level` or `RUST_LOG`, with one hard rule no filter can lift: libraries that write SQL
//! text or parameter values into their debug output (sqlparser logs every statement it parses
//! and every literal token, tokio-postgres every query and its parameters) are heard only at
//! WARN and above. Passwords (`ALTER USER … PASSWORD '…'` is parsed) and values never reach
//! the log, whatever the level; pgveil's own events log fingerprints (`log.log_sql` aside).
//! Colours only on a terminal.

use std::io::IsTerminal;

use tracing::Level;
use tracing_subscriber::filter::{EnvFilter, FilterExt, LevelFilter, Targets};
use tracing_subscriber::layer::SubscriberExt;
use tracing_subscriber::util::SubscriberInitExt;
use tracing_subscriber::Layer;

/// Crates whose events below WARN may carry SQL text or values.
const TELLS_VALUES: &[&str] = &["sqlparser", "tokio_postgres", "postgres_protocol"];

/// Install the subscriber (once per process; later calls do nothing).
pub fn init(level: &str) {
    let wanted = EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new(level));
    let layer = tracing_subscriber::fmt::layer()
        .with_target(false)
        .with_ansi(std::io::stdout().is_terminal())
        .with_filter(wanted.and(hard_rule()));
    let _ = tracing_subscriber::registry().with(layer).try_init();
}

/// The hard rule: nothing below WARN from a crate that may log SQL or values. (A target
/// filter, so that disabled call sites stay disabled once and for all, as with the level
/// filter alone: no cost per event on the relay's path.)
fn hard_rule() -> Targets {
    TELLS_VALUES
        .iter()
        .fold(Targets::new().with_default(LevelFilter::TRACE), |t, c| {
            t.with_target(*c, Level::WARN)
        })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn libraries_that_log_values_are_cut_below_warn() {
        let rule = hard_rule();
        for t in ["sqlparser", "sqlparser::parser", "tokio_postgres::query"] {
            assert!(!rule.would_enable(t, &Level::DEBUG), "{t}");
            assert!(rule.would_enable(t, &Level::WARN), "{t}");
        }
        for t in ["pgveil::session", "tokio", "moka::cht"] {
            assert!(rule.would_enable(t, &Level::TRACE), "{t}");
        }
    }
}
