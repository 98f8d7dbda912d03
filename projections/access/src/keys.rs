//! API keys and invitation tokens: generation, hashing, constant-time checking.

use hmac::{KeyInit, Mac};
use sha2::Sha256;
use sqlx::PgPool;

type HmacSha256 = hmac::Hmac<Sha256>;

/// The server's HMAC key for API keys and invitation tokens.
#[derive(Clone)]
pub struct KeySecret(Vec<u8>);

impl std::fmt::Debug for KeySecret {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("KeySecret(***)")
    }
}

impl KeySecret {
    pub fn new(bytes: impl Into<Vec<u8>>) -> Self {
        Self(bytes.into())
    }

    /// `auth.key_secret` when configured, else the secret generated on first start and kept in
    /// `kairos.instance` (so every instance on the database agrees).
    pub async fn load(pool: &PgPool, configured: Option<&str>) -> Result<Self, sqlx::Error> {
        if let Some(s) = configured {
            return Ok(Self::new(s.as_bytes()));
        }
        let mut fresh = [0u8; 32];
        getrandom::fill(&mut fresh).map_err(|e| sqlx::Error::Protocol(e.to_string()))?;
        sqlx::query("UPDATE kairos.instance SET key_secret = $1 WHERE key_secret IS NULL")
            .bind(fresh.as_slice())
            .execute(pool)
            .await?;
        let stored: Vec<u8> = sqlx::query_scalar("SELECT key_secret FROM kairos.instance")
            .fetch_one(pool)
            .await?;
        Ok(Self(stored))
    }

    fn mac(&self, secret: &str) -> HmacSha256 {
        // HMAC accepts keys of any length.
        let mut mac = <HmacSha256 as KeyInit>::new_from_slice(&self.0)
            .unwrap_or_else(|_| unreachable!("HMAC takes keys of any length"));
        mac.update(secret.as_bytes());
        mac
    }

    /// HMAC-SHA256 of `secret`: what is stored and published instead of it.
    pub fn hash(&self, secret: &str) -> [u8; 32] {
        self.mac(secret).finalize().into_bytes().into()
    }

    /// The first 16 hex digits of a second HMAC of `key`: finds the stored row without
    /// revealing anything about the key to whoever reads the stream or the table.
    pub fn lookup(&self, key: &str) -> String {
        let mut mac = self.mac("lookup:");
        mac.update(key.as_bytes());
        hex(&mac.finalize().into_bytes()[..8])
    }

    /// Whether `secret` hashes to `expected`, compared in constant time.
    pub fn verify(&self, secret: &str, expected: &[u8]) -> bool {
        self.mac(secret).verify_slice(expected).is_ok()
    }
}

fn random_hex(prefix: &str) -> String {
    let mut bytes = [0u8; 32];
    // The OS random source failing is not something a caller can handle.
    getrandom::fill(&mut bytes).unwrap_or_else(|e| panic!("no OS randomness: {e}"));
    let mut s = String::with_capacity(prefix.len() + 64);
    s.push_str(prefix);
    for b in bytes {
        s.push_str(&format!("{b:02x}"));
    }
    s
}

/// A new API key: `kairos_` and 256 random bits in hex.
pub fn generate_key() -> String {
    random_hex("kairos_")
}

/// A new one-time invitation token: `kinv_` and 256 random bits in hex.
pub fn generate_token() -> String {
    random_hex("kinv_")
}

pub use kairos_events::hex::{decode as unhex, encode as hex};

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keys_are_random_and_hashes_keyed() {
        let (a, b) = (generate_key(), generate_key());
        assert_ne!(a, b);
        assert_eq!(a.len(), "kairos_".len() + 64);
        let s1 = KeySecret::new(b"one".to_vec());
        let s2 = KeySecret::new(b"two".to_vec());
        assert_ne!(s1.hash(&a), s2.hash(&a));
        assert!(s1.verify(&a, &s1.hash(&a)));
        assert!(!s1.verify(&b, &s1.hash(&a)));
        assert!(!s1.verify(&a, &[0; 31]));
        assert_eq!(s1.lookup(&a).len(), 16);
        assert_ne!(s1.lookup(&a), s2.lookup(&a), "the lookup is keyed too");
        assert_eq!(unhex(&hex(&[0, 255, 16])), Some(vec![0, 255, 16]));
        assert_eq!(unhex("zz"), None);
        assert!(!format!("{s1:?}").contains("one"));
    }
}
