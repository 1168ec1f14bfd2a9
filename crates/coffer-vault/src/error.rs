//! Errors of the vault. Messages name objects by opaque id and never include a secret,
//! a username or mail content.

use crate::kdf::KdfError;
use crate::pepper::PepperError;
use crate::registry::Locked;
use crate::secret::PasswordError;
use coffer_store::StoreError;
use coffer_types::{SlotKind, UsernameError};

#[derive(Debug, thiserror::Error)]
pub enum VaultError {
    /// Wrong password, unknown user, or a wrong pepper: deliberately indistinguishable.
    #[error("authentication failed")]
    AuthFailed,
    #[error("invalid username: {0}")]
    InvalidUsername(#[from] UsernameError),
    #[error("invalid password: {0}")]
    InvalidPassword(#[from] PasswordError),
    #[error("a user with that name already exists")]
    UserExists,
    #[error("no such user")]
    NoSuchUser,
    #[error("{} cannot be used here", .0.as_str())]
    KindNotAccepted(SlotKind),
    #[error("{0}")]
    NotAllowed(&'static str),
    #[error(
        "low security mode needs the operator's recovery public key in the config ([recovery] public_key); run `coffer recovery-key generate`"
    )]
    NoRecoveryKey,
    #[error("this user has no escrow slot (high security mode): the operator cannot recover it")]
    NoEscrow,
    #[error("the recovery key does not open this user's escrow slot")]
    WrongRecoveryKey,
    #[error("that secret opens no earlier keyring of this user")]
    NoOldKeyring,
    #[error("the new password must differ from every current secret of this user")]
    SecretInUse,
    #[error("stored data failed authentication: {0}")]
    Tampered(String),
    #[error(transparent)]
    Locked(#[from] Locked),
    #[error(transparent)]
    Pepper(#[from] PepperError),
    #[error(transparent)]
    Kdf(#[from] KdfError),
    #[error("storage error: {0}")]
    Store(#[from] StoreError),
    #[error("internal error: {0}")]
    Internal(String),
}

impl From<crate::keyring::KeyringError> for VaultError {
    fn from(e: crate::keyring::KeyringError) -> Self {
        VaultError::Tampered(e.to_string())
    }
}
