//! Logging set-up for `serve` and `demo`: `tracing` to standard output, filtered by
//! `log.level` or `RUST_LOG`, with one hard rule no filter can lift: libraries that write SQL
//! text or parameter values into their debug output (sqlparser logs every statement it parses
//! and every literal token, tokio-postgres every query and its parameters) are heard only at
//! WARN and above. Passwords (`ALTER USER … PASSWORD '…'` is parsed) and values never reach
//! the log, whatever the level; pgveil's own events log fingerprints (`log.log_sql` aside).
//! Colours only on a terminal.

use std::io::IsTerminal;

use tracing::{Level, Metadata};
use tracing_subscriber::filter::{filter_fn, EnvFilter, FilterExt};
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
        .with_filter(wanted.and(filter_fn(may_log)));
    let _ = tracing_subscriber::registry().with(layer).try_init();
}

/// The hard rule: nothing below WARN from a crate that may log SQL or values.
fn may_log(meta: &Metadata<'_>) -> bool {
    *meta.level() <= Level::WARN || !tells_values(meta.target())
}

fn tells_values(target: &str) -> bool {
    TELLS_VALUES.iter().any(|c| {
        target
            .strip_prefix(c)
            .is_some_and(|rest| rest.is_empty() || rest.starts_with("::"))
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn libraries_that_log_values_are_cut_below_warn() {
        for t in ["sqlparser", "sqlparser::parser", "tokio_postgres::query"] {
            assert!(tells_values(t), "{t}");
        }
        for t in ["pgveil::session", "sqlparserx", "tokio", "moka::cht"] {
            assert!(!tells_values(t), "{t}");
        }
    }
}
