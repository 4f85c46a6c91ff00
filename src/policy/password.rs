//! Passwords: only SCRAM-SHA-256 verifiers are stored; plaintext passwords are checked
//! against the password policy and never logged or kept.

use base64::Engine;
use pgwire::api::auth::sasl::scram::ScramSecret;

use crate::config::PasswordPolicy;

/// Check a plaintext password against the policy; the error lists what is missing.
pub fn check_policy(policy: &PasswordPolicy, password: &str) -> Result<(), String> {
    let mut missing = Vec::new();
    if password.chars().count() < policy.min_length {
        missing.push(format!("at least {} characters", policy.min_length));
    }
    if policy.require_upper && !password.chars().any(char::is_uppercase) {
        missing.push("an upper-case letter".to_owned());
    }
    if policy.require_lower && !password.chars().any(char::is_lowercase) {
        missing.push("a lower-case letter".to_owned());
    }
    if policy.require_digit && !password.chars().any(|c| c.is_ascii_digit()) {
        missing.push("a digit".to_owned());
    }
    if policy.require_symbol && !password.chars().any(|c| !c.is_alphanumeric()) {
        missing.push("a symbol".to_owned());
    }
    if missing.is_empty() {
        Ok(())
    } else {
        Err(format!(
            "password does not meet the password policy: needs {}",
            missing.join(", ")
        ))
    }
}

/// A PostgreSQL-format SCRAM-SHA-256 verifier for a password.
pub fn make_verifier(password: &str) -> String {
    postgres_protocol::password::scram_sha_256(password.as_bytes())
}

/// Parse `SCRAM-SHA-256$<iter>:<salt>$<StoredKey>:<ServerKey>` into pgwire's secret.
pub fn parse_verifier(v: &str) -> Option<ScramSecret> {
    let b64 = base64::engine::general_purpose::STANDARD;
    let rest = v.strip_prefix("SCRAM-SHA-256$")?;
    let (iter_salt, keys) = rest.split_once('$')?;
    let (iter, salt) = iter_salt.split_once(':')?;
    let (stored, server) = keys.split_once(':')?;
    Some(ScramSecret::Verifier {
        salt: b64.decode(salt).ok()?,
        iterations: iter.parse().ok().filter(|i| *i >= 4096)?,
        stored_key: b64.decode(stored).ok()?,
        server_key: b64.decode(server).ok()?,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn verifier_roundtrip() {
        let v = make_verifier("Secret123456");
        assert!(v.starts_with("SCRAM-SHA-256$4096:"));
        assert!(parse_verifier(&v).is_some());
        assert!(parse_verifier("md5abc").is_none());
        assert!(
            parse_verifier("SCRAM-SHA-256$1:AAAA$AAAA:AAAA").is_none(),
            "weak iteration count refused"
        );
    }

    #[test]
    fn password_policy_lists_what_is_missing() {
        let p = PasswordPolicy::default();
        let e = check_policy(&p, "short").unwrap_err();
        assert!(
            e.contains("12 characters") && e.contains("upper-case") && e.contains("digit"),
            "{e}"
        );
        assert!(check_policy(&p, "LongEnough123").is_ok());
    }
}
