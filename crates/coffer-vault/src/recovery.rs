//! The operator's offline recovery key (low security mode): an age X25519 key pair whose
//! secret half is written to a file the operator takes away, and whose public half is put
//! in the config. Escrow slots seal a user's master key to it.

use crate::secret::SecretBytes;
use secrecy::ExposeSecret;
use std::str::FromStr;
use zeroize::Zeroizing;

#[derive(Debug, thiserror::Error)]
pub enum RecoveryKeyError {
    #[error("recovery public key is not an age X25519 recipient (age1...): {0}")]
    BadPublic(String),
    #[error("recovery key file holds no AGE-SECRET-KEY-1... line")]
    NoSecret,
    #[error("recovery key file holds a malformed secret key")]
    BadSecret,
}

/// A freshly generated key pair: `secret` goes to the file, `public` to the config.
pub struct GeneratedRecoveryKey {
    pub secret_file_text: Zeroizing<String>,
    pub public: String,
}

pub fn generate() -> GeneratedRecoveryKey {
    let id = age::x25519::Identity::generate();
    let public = id.to_public().to_string();
    let secret = id.to_string();
    let text = format!(
        "# Coffer operator recovery key. Keep it OFFLINE: it opens every low-security mailbox.\n# public key: {public}\n{}\n",
        secret.expose_secret()
    );
    GeneratedRecoveryKey {
        secret_file_text: Zeroizing::new(text),
        public,
    }
}

/// The public half, parsed from the config.
#[derive(Clone)]
pub struct RecoveryPublicKey(pub(crate) age::x25519::Recipient);

impl RecoveryPublicKey {
    pub fn parse(s: &str) -> Result<Self, RecoveryKeyError> {
        age::x25519::Recipient::from_str(s.trim())
            .map(RecoveryPublicKey)
            .map_err(|e| RecoveryKeyError::BadPublic(e.to_string()))
    }
}

impl std::fmt::Display for RecoveryPublicKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        self.0.fmt(f)
    }
}

/// The secret half, read from the operator's file for `coffer user recover`.
pub struct RecoverySecretKey(pub(crate) age::x25519::Identity);

impl RecoverySecretKey {
    pub fn parse_file_text(text: &SecretBytes) -> Result<Self, RecoveryKeyError> {
        let text = std::str::from_utf8(text).map_err(|_| RecoveryKeyError::BadSecret)?;
        let line = text
            .lines()
            .map(str::trim)
            .find(|l| l.starts_with("AGE-SECRET-KEY-1"))
            .ok_or(RecoveryKeyError::NoSecret)?;
        age::x25519::Identity::from_str(line)
            .map(RecoverySecretKey)
            .map_err(|_| RecoveryKeyError::BadSecret)
    }
}
