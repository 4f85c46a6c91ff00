//! SCRAM-SHA-256 against the catalog's user store. Unknown and disabled users get a
//! deterministic fake verifier so the exchange runs to the end and fails exactly like a
//! wrong password (no user enumeration).

use std::sync::Arc;

use async_trait::async_trait;
use pgwire::api::auth::sasl::scram::ScramSecret;
use pgwire::api::auth::{AuthSource, LoginInfo, Password};
use pgwire::error::{PgWireError, PgWireResult};

use crate::policy::password::parse_verifier;
use crate::policy::PolicyStore;

/// The authenticated pgveil user name.
pub type Identity = String;

/// Looks users up in the current policy snapshot.
pub struct CatalogAuth {
    store: Arc<PolicyStore>,
    fake_key: [u8; 32],
}

impl std::fmt::Debug for CatalogAuth {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("CatalogAuth")
    }
}

impl CatalogAuth {
    pub fn new(store: Arc<PolicyStore>) -> Self {
        CatalogAuth {
            store,
            fake_key: rand::random(),
        }
    }

    fn fake(&self, user: &str) -> ScramSecret {
        let key = ring::hmac::Key::new(ring::hmac::HMAC_SHA256, &self.fake_key);
        let derive = |label: &str| {
            ring::hmac::sign(&key, format!("{label}:{user}").as_bytes())
                .as_ref()
                .to_vec()
        };
        ScramSecret::Verifier {
            salt: derive("salt")[..16].to_vec(),
            iterations: 4096,
            stored_key: derive("stored"),
            server_key: derive("server"),
        }
    }
}

#[async_trait]
impl AuthSource<Identity> for CatalogAuth {
    async fn get_password(&self, login: &LoginInfo) -> PgWireResult<Password> {
        Err(PgWireError::InvalidPassword(
            login.user().unwrap_or_default().to_owned(),
        ))
    }

    async fn get_scram_secret(
        &self,
        login: &LoginInfo,
    ) -> PgWireResult<(ScramSecret, Option<Identity>)> {
        let name = login.user().unwrap_or_default();
        let snap = self.store.snapshot();
        let real = snap
            .user(name)
            .filter(|u| u.active)
            .and_then(|u| u.password_verifier.as_deref())
            .and_then(parse_verifier);
        Ok(match real {
            Some(secret) => (secret, Some(name.to_owned())),
            None => (self.fake(name), None),
        })
    }
}
