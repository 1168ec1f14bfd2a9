//! The vault: every secret Coffer handles, and the only crate that touches raw keys.
//!
//! It owns the server pepper, Argon2id, the key slots that wrap each user's master key,
//! the keyrings derived from it, sealing of metadata and message bodies, and the registry
//! of unlocked keyrings. The design is `../shared/design/CRYPTO.md`; what is built and
//! where it deviates is `docs/SECURITY.md`; the bytes at rest are `docs/FORMAT.md`.
#![forbid(unsafe_code)]

mod age_open;
pub mod body;
mod error;
pub mod kdf;
pub mod keyring;
pub mod pepper;
pub mod primitives;
pub mod recovery;
pub mod registry;
pub mod secret;
pub mod throttle;
mod vault;

pub use error::VaultError;
pub use kdf::KdfParams;
pub use keyring::{Keyring, KeyringError, Place, PublicSealer};
pub use pepper::{Pepper, PepperError};
pub use recovery::{RecoveryPublicKey, RecoverySecretKey};
pub use registry::{Locked, Registry, SessionInfo, Unlocked};
pub use secret::{Password, PasswordError, Secret32};
pub use throttle::Throttle;
pub use vault::*;
