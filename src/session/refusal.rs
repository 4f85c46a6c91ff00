//! Refusals travel through PostgreSQL as marker statements so that ordering, pipelining and
//! transaction state stay PostgreSQL's own. The marker names a relation that cannot exist
//! (random per-session token); the 42P01 error it produces is swapped for pgveil's error.

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Mutex;

use bytes::BytesMut;

use crate::error::ClientError;

/// Pending refusals of one session.
pub struct Refusals {
    token: String,
    next: AtomicU64,
    pending: Mutex<HashMap<u64, ClientError>>,
}

/// Cap on remembered refusals (they are consumed when PostgreSQL reports them; refusals
/// skipped because a transaction was already aborted are dropped oldest first).
const MAX_PENDING: usize = 4096;

impl Default for Refusals {
    fn default() -> Self {
        Self::new()
    }
}

impl Refusals {
    pub fn new() -> Refusals {
        Refusals {
            token: format!("{:016x}", rand::random::<u64>()),
            next: AtomicU64::new(1),
            pending: Mutex::new(HashMap::new()),
        }
    }

    /// Register `error` and return SQL that runs `prefix` (already checked) then fails with it.
    pub fn statement_with(&self, prefix: String, error: ClientError) -> String {
        // Unauthorised attempts are logged (in the session span: user, client); SQL text is not.
        tracing::warn!(sqlstate = error.sqlstate(), reason = %error, "statement refused");
        let id = self.next.fetch_add(1, Ordering::Relaxed);
        if let Ok(mut p) = self.pending.lock() {
            if p.len() >= MAX_PENDING {
                if let Some(oldest) = p.keys().min().copied() {
                    p.remove(&oldest);
                }
            }
            p.insert(id, error);
        }
        let marker = format!("SELECT FROM \"pgveil_refusal_{}_{id}\"", self.token);
        if prefix.is_empty() {
            marker
        } else {
            format!("{prefix};\n{marker}")
        }
    }

    /// If `msg` (a whole ErrorResponse) is one of our markers, the replacement bytes.
    pub fn replace(&self, msg: &[u8]) -> Option<BytesMut> {
        let needle = format!("pgveil_refusal_{}_", self.token);
        let (code, message) = error_fields(msg);
        if code != Some("42P01") {
            return None;
        }
        let message = message?;
        let start = message.find(&needle)? + needle.len();
        let digits: String = message[start..]
            .chars()
            .take_while(char::is_ascii_digit)
            .collect();
        let id: u64 = digits.parse().ok()?;
        let err = self.pending.lock().ok()?.remove(&id)?;
        Some(err.encode())
    }
}

/// SQLSTATE and message of an ErrorResponse.
fn error_fields(msg: &[u8]) -> (Option<&str>, Option<&str>) {
    let mut code = None;
    let mut message = None;
    let mut rest = msg.get(5..).unwrap_or_default();
    while let Some((&t, tail)) = rest.split_first() {
        if t == 0 {
            break;
        }
        let end = tail.iter().position(|&b| b == 0).unwrap_or(tail.len());
        let val = std::str::from_utf8(&tail[..end]).ok();
        match t {
            b'C' => code = val,
            b'M' => message = val,
            _ => {}
        }
        rest = tail.get(end + 1..).unwrap_or_default();
    }
    (code, message)
}

#[cfg(test)]
mod tests {
    use super::*;
    use pgwire::error::ErrorInfo;
    use pgwire::messages::response::ErrorResponse;
    use pgwire::messages::Message;

    fn pg_error(code: &str, msg: &str) -> BytesMut {
        let e: ErrorResponse = ErrorInfo::new("ERROR".into(), code.into(), msg.into()).into();
        let mut b = BytesMut::new();
        e.encode(&mut b).unwrap();
        b
    }

    #[test]
    fn marker_error_is_replaced_once() {
        let r = Refusals::new();
        let sql = r.statement_with(
            String::new(),
            ClientError::denied("permission denied for table customers"),
        );
        let name = sql.split('"').nth(1).unwrap();
        let upstream = pg_error("42P01", &format!("relation \"{name}\" does not exist"));
        let out = r.replace(&upstream).expect("replaced");
        assert!(String::from_utf8_lossy(&out).contains("permission denied for table customers"));
        assert!(r.replace(&upstream).is_none(), "consumed");
    }

    #[test]
    fn foreign_or_forged_markers_pass_through() {
        let r = Refusals::new();
        let _ = r.statement_with(String::new(), ClientError::denied("x"));
        assert!(r
            .replace(&pg_error(
                "42P01",
                "relation \"pgveil_refusal_0000000000000000_1\" does not exist"
            ))
            .is_none());
        assert!(r.replace(&pg_error("22012", "division by zero")).is_none());
    }
}
