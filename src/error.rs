//! The one place that turns pgveil's refusals and failures into PostgreSQL errors
//! (SQLSTATE, message, hint) that are safe to show to a client.

use pgwire::error::ErrorInfo;
use pgwire::messages::response::ErrorResponse;

/// Everything pgveil itself may answer a client with.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ClientError {
    /// 28P01 — same for unknown user and wrong password.
    #[error("password authentication failed for user \"{0}\"")]
    AuthFailed(String),
    /// 28000 — e.g. plaintext login when TLS is required, disabled user.
    #[error("{0}")]
    AuthRejected(String),
    /// 08P01 — malformed or oversized protocol message.
    #[error("{0}")]
    Protocol(String),
    /// 0A000 — a startup option or feature pgveil does not support.
    #[error("{0}")]
    FeatureUnsupported(String),
    /// 22021 — non-UTF8 client encoding requested.
    #[error("{0}")]
    Encoding(String),
    /// 3D000 — database not served by this pgveil.
    #[error("database \"{0}\" does not exist")]
    UnknownDatabase(String),
    /// 53300 — connection limit reached.
    #[error("sorry, too many clients already")]
    TooManyConnections,
    /// 08006 — PostgreSQL unreachable.
    #[error("could not connect to the upstream PostgreSQL server")]
    UpstreamUnavailable,
    /// 57P01 — pgveil shutting down.
    #[error("terminating connection because pgveil is shutting down")]
    ShuttingDown,
    /// 42501 — a policy refusal; the message says which rule.
    #[error("{message}")]
    Denied {
        message: String,
        hint: Option<String>,
    },
    /// 0A000 — SQL pgveil cannot check, refused for a restricted user.
    #[error("{message}")]
    Unsupported {
        message: String,
        hint: Option<String>,
    },
    /// 54000 — statement too long / too deep.
    #[error("{0}")]
    TooComplex(String),
    /// 54000 — query returned more rows than the role allows.
    #[error("{0}")]
    RowLimit(String),
    /// 22023 — an invalid value, e.g. a password that breaks the password policy.
    #[error("{0}")]
    InvalidParameter(String),
    /// 22023 at login — PostgreSQL refused the value of a setting from the startup packet
    /// (its own message).
    #[error("{0}")]
    BadSetting(String),
    /// 42704 at login — PostgreSQL does not know a setting from the startup packet.
    #[error("{0}")]
    UnknownSetting(String),
}

impl ClientError {
    /// Shorthand for a 42501 refusal.
    pub fn denied(message: impl Into<String>) -> Self {
        ClientError::Denied {
            message: message.into(),
            hint: None,
        }
    }

    /// Shorthand for a 0A000 refusal.
    pub fn unsupported(message: impl Into<String>) -> Self {
        ClientError::Unsupported {
            message: message.into(),
            hint: None,
        }
    }

    /// The SQLSTATE for this error.
    pub fn sqlstate(&self) -> &'static str {
        match self {
            ClientError::AuthFailed(_) => "28P01",
            ClientError::AuthRejected(_) => "28000",
            ClientError::Protocol(_) => "08P01",
            ClientError::FeatureUnsupported(_) | ClientError::Unsupported { .. } => "0A000",
            ClientError::Encoding(_) => "22021",
            ClientError::UnknownDatabase(_) => "3D000",
            ClientError::TooManyConnections => "53300",
            ClientError::UpstreamUnavailable => "08006",
            ClientError::ShuttingDown => "57P01",
            ClientError::Denied { .. } => "42501",
            ClientError::TooComplex(_) | ClientError::RowLimit(_) => "54000",
            ClientError::InvalidParameter(_) | ClientError::BadSetting(_) => "22023",
            ClientError::UnknownSetting(_) => "42704",
        }
    }

    fn hint(&self) -> Option<String> {
        match self {
            ClientError::Denied { hint, .. } | ClientError::Unsupported { hint, .. } => {
                hint.clone()
            }
            ClientError::AuthRejected(_) => None,
            _ => None,
        }
    }

    /// Errors that end the session (sent with severity FATAL).
    pub fn is_fatal(&self) -> bool {
        !matches!(
            self,
            ClientError::Denied { .. }
                | ClientError::Unsupported { .. }
                | ClientError::TooComplex(_)
                | ClientError::RowLimit(_)
                | ClientError::InvalidParameter(_)
        )
    }

    /// Build the wire ErrorResponse.
    pub fn to_error_response(&self) -> ErrorResponse {
        let severity = if self.is_fatal() { "FATAL" } else { "ERROR" };
        let mut info = ErrorInfo::new(
            severity.to_owned(),
            self.sqlstate().to_owned(),
            self.to_string(),
        );
        info.hint = self.hint();
        info.into()
    }

    /// Encode the ErrorResponse as wire bytes.
    pub fn encode(&self) -> bytes::BytesMut {
        use pgwire::messages::Message;
        let mut buf = bytes::BytesMut::new();
        // Encoding an ErrorResponse into a BytesMut cannot fail for our bounded messages.
        let _ = self.to_error_response().encode(&mut buf);
        buf
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sqlstates_are_stable() {
        assert_eq!(ClientError::AuthFailed("x".into()).sqlstate(), "28P01");
        assert_eq!(ClientError::denied("no").sqlstate(), "42501");
        assert_eq!(ClientError::unsupported("no").sqlstate(), "0A000");
        assert_eq!(ClientError::TooManyConnections.sqlstate(), "53300");
        assert!(!ClientError::denied("x").is_fatal());
        assert!(ClientError::TooManyConnections.is_fatal());
    }

    #[test]
    fn encodes_an_error_message() {
        let b = ClientError::denied("permission denied").encode();
        assert_eq!(b[0], b'E');
        let s = String::from_utf8_lossy(&b);
        assert!(s.contains("42501") && s.contains("permission denied"));
    }
}
