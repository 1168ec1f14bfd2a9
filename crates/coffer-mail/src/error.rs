//! Errors of the mailbox model; the protocol layers map them to IMAP NO/BAD and LMTP codes.

use coffer_store::StoreError;
use coffer_types::MailboxNameError;
use coffer_vault::{KeyringError, Locked, VaultError};

#[derive(Debug, thiserror::Error)]
pub enum MailError {
    #[error("no such mailbox")]
    NoSuchMailbox,
    #[error("mailbox already exists")]
    MailboxExists,
    #[error("mailbox has children; delete them first")]
    HasChildren,
    #[error("{0}")]
    NotAllowed(&'static str),
    #[error("invalid mailbox name: {0}")]
    InvalidName(#[from] MailboxNameError),
    #[error("message is larger than the limit of {0} bytes")]
    TooLarge(u64),
    #[error("no such user")]
    NoSuchUser,
    #[error("stored data failed authentication: {0}")]
    Tampered(String),
    #[error(transparent)]
    Locked(#[from] Locked),
    #[error(transparent)]
    Vault(#[from] VaultError),
    #[error("storage error: {0}")]
    Store(#[from] StoreError),
}

impl From<KeyringError> for MailError {
    fn from(e: KeyringError) -> Self {
        MailError::Tampered(e.to_string())
    }
}
