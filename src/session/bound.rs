//! Running a restricted user's simple-protocol statement as pgveil's own prepared statement
//! (see `sql::bind`): the Query message is replaced by Parse (first use in the session),
//! Bind, Describe, Execute and Sync, and the upstream pump drops the ParseComplete,
//! BindComplete, CloseComplete and NoData that a Query does not produce. The client sees
//! exactly the messages the Query would have produced.
//!
//! Which responses are pgveil's is known by counting: every Query, Sync and FunctionCall gets
//! exactly one ReadyForQuery, and PostgreSQL never sends more (it may send fewer, e.g. a Sync
//! ignored during COPY, which only keeps this path off). A statement is bound only when every
//! earlier unit has been answered and no extended-protocol batch of the client's is open, so
//! the responses up to the next ReadyForQuery are all the bound statement's.

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, AtomicU8, AtomicUsize, Ordering};

use bytes::{Bytes, BytesMut};
use pgwire::messages::extendedquery::{Bind, Close, Describe, Execute, Parse, Sync};

use super::{encode, SessionError};
use crate::sql::bind::{BindPlan, Params};

/// Prepared statements pgveil keeps per session (least recently used ones are closed).
const MAX_STATEMENTS: usize = 256;

/// Protocol-level statement names starting with this are pgveil's.
pub const NAME_PREFIX: &str = "pgveilq_";

/// Shared by the two pumps.
#[derive(Default)]
pub struct Units {
    /// ReadyForQuery messages still to come.
    outstanding: AtomicUsize,
    /// The oldest unanswered unit is a bound statement of pgveil's.
    ours: AtomicBool,
    /// ParseComplete seen in that unit.
    parsed: AtomicBool,
    /// ErrorResponse seen in that unit.
    errored: AtomicBool,
    /// Transaction status of the last ReadyForQuery (`I`, `T` or `E`; 0 before the first).
    status: AtomicU8,
    /// pgveil's `DISCARD ALL` is under way: the session is being reset for the pool.
    resetting: AtomicBool,
}

impl Units {
    /// A new session: PostgreSQL's startup ended with ReadyForQuery `I`.
    pub fn started() -> Units {
        let units = Units::default();
        units.status.store(b'I', Ordering::Release);
        units
    }

    /// A Query, Sync or FunctionCall went upstream.
    pub fn sent(&self) {
        self.outstanding.fetch_add(1, Ordering::AcqRel);
    }

    /// Every unit sent so far has been answered.
    pub fn idle(&self) -> bool {
        self.outstanding.load(Ordering::Acquire) == 0
    }

    /// Upstream pump: are the current responses a bound statement's?
    pub fn ours(&self) -> bool {
        self.ours.load(Ordering::Acquire)
    }

    /// Upstream pump: ParseComplete of a bound statement.
    pub fn parse_complete(&self) {
        self.parsed.store(true, Ordering::Release);
    }

    /// Upstream pump: ErrorResponse of a bound statement.
    pub fn error(&self) {
        self.errored.store(true, Ordering::Release);
    }

    /// Client pump: a bound unit is about to go upstream.
    fn begin(&self) {
        self.parsed.store(false, Ordering::Release);
        self.errored.store(false, Ordering::Release);
        self.ours.store(true, Ordering::Release);
    }

    /// Every unit answered and the last ReadyForQuery said a transaction is open (or failed).
    pub fn idle_in_transaction(&self) -> bool {
        self.idle() && self.status.load(Ordering::Acquire) != b'I'
    }

    /// Client pump: pgveil's reset statement is about to go upstream.
    pub fn begin_reset(&self) {
        self.resetting.store(true, Ordering::Release);
        self.sent();
    }

    /// Upstream pump: the responses from now on are the reset's.
    pub fn resetting(&self) -> bool {
        self.resetting.load(Ordering::Acquire)
    }

    /// Upstream pump: a ReadyForQuery with this transaction status ends the oldest unit.
    pub fn ready_for_query(&self, status: u8) {
        self.status.store(status, Ordering::Release);
        self.ours.store(false, Ordering::Release);
        let _ = self
            .outstanding
            .fetch_update(Ordering::AcqRel, Ordering::Acquire, |n| n.checked_sub(1));
    }
}

/// The session's prepared statements and what the client has open (client pump only).
pub struct Statements {
    enabled: bool,
    prefix: String,
    next: u64,
    tick: u64,
    map: HashMap<(u64, Vec<u32>), Entry>,
    /// Used by the last bound unit: kept only if PostgreSQL confirmed it and it did not fail
    /// (it may have been parsed against a structure that changed since).
    pending: Option<((u64, Vec<u32>), bool)>,
    /// Statements to close upstream with the next bound unit.
    to_close: Vec<String>,
    /// An extended-protocol batch of the client's is not yet closed by Sync.
    batch_open: bool,
    /// The client may have an unnamed statement (a Query would drop it).
    unnamed: bool,
}

struct Entry {
    name: String,
    used: u64,
}

impl Statements {
    pub fn new(enabled: bool) -> Statements {
        Statements {
            enabled,
            prefix: format!("{NAME_PREFIX}{:016x}_", rand::random::<u64>()),
            next: 0,
            tick: 0,
            map: HashMap::new(),
            pending: None,
            to_close: Vec::new(),
            batch_open: false,
            unnamed: false,
        }
    }

    /// Stop using every statement (they were, or may have been, dropped or taken over): they
    /// are closed with the next bound unit (closing a missing statement is no error), and new
    /// ones get new names.
    pub fn forget_all(&mut self) {
        if !self.map.is_empty() {
            self.to_close.extend(self.map.drain().map(|(_, e)| e.name));
        }
        self.pending = None;
    }

    /// A frontend message other than Query: track batches and anything that could touch
    /// pgveil's statements.
    pub fn client_message(&mut self, tag: u8, name: Option<&str>, sql: Option<&str>) {
        match tag {
            b'S' => self.batch_open = false,
            b'P' | b'B' | b'D' | b'E' | b'C' | b'H' => self.batch_open = true,
            _ => {}
        }
        if tag == b'P' && name == Some("") {
            self.unnamed = true;
        }
        let named = name.is_some_and(|n| n.starts_with(NAME_PREFIX));
        // the text scan only matters while pgveil has statements (not on every Parse)
        if named || (!self.map.is_empty() && sql.is_some_and(drops_statements)) {
            self.forget_all();
        }
    }

    /// An extended-protocol batch of the client's is not yet closed by Sync.
    pub fn batch_open(&self) -> bool {
        self.batch_open
    }

    /// Query text: DISCARD ALL and DEALLOCATE drop prepared statements.
    pub fn client_query(&mut self, sql: &str) {
        if !self.map.is_empty() && drops_statements(sql) {
            self.forget_all();
        }
    }

    /// A Query went upstream as text: PostgreSQL dropped the unnamed statement.
    pub fn text_query(&mut self) {
        self.unnamed = false;
    }

    /// Write a bound unit for `plan` with `params` into `out`, if the stream allows it now.
    /// False: the caller sends the statement as text.
    pub fn bind(
        &mut self,
        units: &Units,
        plan: &BindPlan,
        params: Params,
        out: &mut BytesMut,
    ) -> Result<bool, SessionError> {
        if !self.enabled || self.batch_open || !units.idle() {
            return Ok(false);
        }
        self.settle(units);
        if self.unnamed {
            // a Query drops the unnamed statement first thing, even in a failed transaction
            encode(&Close::new(b'S', None), out)?;
            self.unnamed = false;
        }
        for name in self.to_close.drain(..) {
            encode(&Close::new(b'S', Some(name)), out)?;
        }
        self.tick += 1;
        let key = (plan.id, params.types);
        let mut parse_sent = false;
        let name = match self.map.get_mut(&key) {
            Some(e) => {
                e.used = self.tick;
                e.name.clone()
            }
            None => {
                self.evict(out)?;
                let name = format!("{}{}", self.prefix, self.next);
                self.next += 1;
                encode(
                    &Parse::new(Some(name.clone()), plan.sql.clone(), key.1.clone()),
                    out,
                )?;
                parse_sent = true;
                self.map.insert(
                    key.clone(),
                    Entry {
                        name: name.clone(),
                        used: self.tick,
                    },
                );
                name
            }
        };
        self.pending = Some((key, parse_sent));
        let values = params
            .values
            .into_iter()
            .map(|v| Some(Bytes::from(v)))
            .collect();
        encode(&Bind::new(None, Some(name), vec![], values, vec![]), out)?;
        encode(&Describe::new(b'P', None), out)?;
        encode(&Execute::new(None, 0), out)?;
        encode(&Sync::new(), out)?;
        units.begin();
        Ok(true)
    }

    /// After the previous bound unit: a statement it parsed exists only if PostgreSQL said
    /// so; one that failed is closed and parsed afresh next time.
    fn settle(&mut self, units: &Units) {
        let Some((key, parse_sent)) = self.pending.take() else {
            return;
        };
        let exists = !parse_sent || units.parsed.load(Ordering::Acquire);
        if exists && !units.errored.load(Ordering::Acquire) {
            return;
        }
        if let Some(e) = self.map.remove(&key) {
            if exists {
                self.to_close.push(e.name);
            }
        }
    }

    /// Close the least recently used statement when the session has too many.
    fn evict(&mut self, out: &mut BytesMut) -> Result<(), SessionError> {
        if self.map.len() < MAX_STATEMENTS {
            return Ok(());
        }
        let oldest = self
            .map
            .iter()
            .min_by_key(|(_, e)| e.used)
            .map(|(k, _)| k.clone());
        if let Some(e) = oldest.and_then(|k| self.map.remove(&k)) {
            encode(&Close::new(b'S', Some(e.name)), out)?;
        }
        Ok(())
    }
}

/// Could this SQL drop prepared statements (DISCARD ALL, DEALLOCATE)? A plain substring test:
/// a false positive only costs a re-Parse.
fn drops_statements(sql: &str) -> bool {
    let b = sql.as_bytes();
    ["discard", "deallocate"].iter().any(|w| {
        b.windows(w.len())
            .any(|win| win.eq_ignore_ascii_case(w.as_bytes()))
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn statement_droppers_are_noticed_in_any_case() {
        assert!(drops_statements("DISCARD ALL"));
        assert!(drops_statements("select 1; DeAllocate all"));
        assert!(!drops_statements("SELECT 1"));
    }

    #[test]
    fn units_count_ready_for_query_and_never_go_below_zero() {
        let u = Units::default();
        assert!(u.idle());
        u.sent();
        u.sent();
        assert!(!u.idle());
        u.ready_for_query(b'I');
        assert!(!u.idle());
        u.ready_for_query(b'I');
        assert!(u.idle());
        u.ready_for_query(b'I');
        assert!(u.idle());
    }
}
