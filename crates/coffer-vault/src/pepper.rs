//! The server pepper: 32 random bytes kept outside the data directory (CRYPTO.md, "Secrets
//! and keys"). It keys the opaque user ids, the directory key that seals usernames, the
//! mailbox lookup hashes, and it is the Argon2id secret input, so a copy of the store
//! without it cannot even start a password guess.
//!
//! Losing the pepper loses every mailbox; docs/OPERATING.md says so plainly.

use crate::primitives::{hkdf32, hmac32};
use crate::secret::Secret32;
use coffer_types::{Generation, MailboxName, UserId, Username};
use std::fs;
use std::io::Write;
use std::path::{Path, PathBuf};
use zeroize::Zeroizing;

const FILE_PREFIX: &str = "coffer-pepper-v1:";

#[derive(Debug, thiserror::Error)]
pub enum PepperError {
    #[error(
        "pepper file {0} is missing; without it no mailbox can be opened (see docs/OPERATING.md)"
    )]
    Missing(PathBuf),
    #[error("pepper file {0} is malformed (expected \"coffer-pepper-v1:\" and 64 hex digits)")]
    Malformed(PathBuf),
    #[error("pepper file {0} can be read by other users; run: chmod 600 {0}")]
    TooOpen(PathBuf),
    #[error(
        "pepper file {0} does not belong to this data directory (wrong pepper); nothing was changed"
    )]
    Mismatch(PathBuf),
    #[error("pepper file {0} already exists; refusing to overwrite it")]
    Exists(PathBuf),
    #[error("cannot write pepper file {path}: {source}")]
    Write {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("cannot read pepper file {path}: {source}")]
    Read {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
}

/// The loaded pepper and the installation-wide keys derived from it.
pub struct Pepper {
    secret: Secret32,
    directory_key: Secret32,
    lookup_key: Secret32,
    path: PathBuf,
}

impl Pepper {
    /// Creates a new pepper file with mode 0600. Refuses to overwrite an existing file.
    pub fn create(path: &Path) -> Result<Self, PepperError> {
        use std::os::unix::fs::OpenOptionsExt;
        let secret = Secret32::random();
        let mut f = fs::OpenOptions::new()
            .write(true)
            .create_new(true)
            .mode(0o600)
            .open(path)
            .map_err(|e| {
                if e.kind() == std::io::ErrorKind::AlreadyExists {
                    PepperError::Exists(path.to_path_buf())
                } else {
                    PepperError::Write {
                        path: path.to_path_buf(),
                        source: e,
                    }
                }
            })?;
        let line = Zeroizing::new(format!(
            "{FILE_PREFIX}{}\n",
            coffer_types::hex(secret.expose())
        ));
        let write = f.write_all(line.as_bytes()).and_then(|_| f.sync_all());
        if let Err(e) = write {
            let _ = fs::remove_file(path);
            return Err(PepperError::Write {
                path: path.to_path_buf(),
                source: e,
            });
        }
        // Make the new directory entry durable too.
        let parent = path
            .parent()
            .filter(|p| !p.as_os_str().is_empty())
            .unwrap_or(Path::new("."));
        if let Ok(d) = fs::File::open(parent) {
            let _ = d.sync_all();
        }
        Ok(Self::from_secret(secret, path))
    }

    /// Loads a pepper file, refusing a missing, malformed or world-readable one.
    pub fn load(path: &Path) -> Result<Self, PepperError> {
        use std::os::unix::fs::PermissionsExt;
        let meta = match fs::metadata(path) {
            Ok(m) => m,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                return Err(PepperError::Missing(path.to_path_buf()));
            }
            Err(e) => {
                return Err(PepperError::Read {
                    path: path.to_path_buf(),
                    source: e,
                });
            }
        };
        if meta.permissions().mode() & 0o077 != 0 {
            return Err(PepperError::TooOpen(path.to_path_buf()));
        }
        let text = Zeroizing::new(fs::read_to_string(path).map_err(|e| PepperError::Read {
            path: path.to_path_buf(),
            source: e,
        })?);
        let hex = text
            .trim_end_matches(['\n', '\r'])
            .strip_prefix(FILE_PREFIX)
            .ok_or_else(|| PepperError::Malformed(path.to_path_buf()))?;
        let bytes = coffer_types::unhex::<32>(hex)
            .ok_or_else(|| PepperError::Malformed(path.to_path_buf()))?;
        Ok(Self::from_secret(Secret32::new(bytes), path))
    }

    /// Builds a pepper from raw bytes (tests and known-answer checks).
    pub fn from_bytes(bytes: [u8; 32]) -> Self {
        Self::from_secret(Secret32::new(bytes), Path::new("<memory>"))
    }

    fn from_secret(secret: Secret32, path: &Path) -> Self {
        let directory_key = hkdf32(secret.expose(), None, b"coffer/directory");
        let lookup_key = hkdf32(secret.expose(), None, b"coffer/mailbox-lookup");
        Pepper {
            secret,
            directory_key,
            lookup_key,
            path: path.to_path_buf(),
        }
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    /// user_id = HMAC-SHA256(pepper, "coffer/user-id" || canonical username).
    pub fn user_id(&self, name: &Username) -> UserId {
        UserId(hmac32(
            self.secret.expose(),
            &[b"coffer/user-id", name.as_str().as_bytes()],
        ))
    }

    /// A value stored in the data directory so that a wrong pepper is detected at start.
    /// It reveals nothing about the pepper (HMAC output under the pepper itself).
    pub fn check_value(&self) -> [u8; 32] {
        hmac32(self.secret.expose(), &[b"coffer/pepper-check"])
    }

    /// Compares against a stored check value, in constant time.
    pub fn verify(&self, stored: &[u8]) -> Result<(), PepperError> {
        use subtle::ConstantTimeEq;
        let ok: bool = self.check_value().as_slice().ct_eq(stored).into();
        if ok {
            Ok(())
        } else {
            Err(PepperError::Mismatch(self.path.clone()))
        }
    }

    pub(crate) fn directory_key(&self) -> &Secret32 {
        &self.directory_key
    }

    /// Keyed hash naming a mailbox for delivery lookups and duplicate checks:
    /// HMAC(HKDF(pepper, "coffer/mailbox-lookup"), user_id || generation || name).
    pub fn mailbox_lookup(
        &self,
        user: &UserId,
        generation: Generation,
        name: &MailboxName,
    ) -> [u8; 32] {
        // IMAP names are case-sensitive except INBOX, which MailboxName already canonicalises.
        hmac32(
            self.lookup_key.expose(),
            &[
                user.as_bytes(),
                &generation.0.to_be_bytes(),
                name.as_str().as_bytes(),
            ],
        )
    }

    /// Keyed hash naming an invitation code at rest, so a copy of the store does not hold
    /// usable codes: HMAC(HKDF(pepper, "coffer/invite"), code).
    pub fn invite_id(&self, code: &str) -> [u8; 32] {
        let key = hkdf32(self.secret.expose(), None, b"coffer/invite");
        hmac32(key.expose(), &[code.as_bytes()])
    }

    /// The Argon2id secret input (RFC 9106 §3.1, "K").
    pub(crate) fn argon2_secret(&self) -> &Secret32 {
        &self.secret
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn tmp(name: &str) -> PathBuf {
        std::env::temp_dir().join(format!("coffer-pepper-{}-{name}", rand::random::<u64>()))
    }

    #[test]
    fn create_then_load_gives_the_same_ids() {
        let p = tmp("ok");
        let a = Pepper::create(&p).unwrap();
        let b = Pepper::load(&p).unwrap();
        let u = Username::new("alice").unwrap();
        assert_eq!(a.user_id(&u), b.user_id(&u));
        use std::os::unix::fs::PermissionsExt;
        assert_eq!(
            fs::metadata(&p).unwrap().permissions().mode() & 0o777,
            0o600
        );
        assert!(matches!(Pepper::create(&p), Err(PepperError::Exists(_))));
        fs::remove_file(&p).unwrap();
    }

    #[test]
    fn missing_short_and_open_files_are_refused_by_name() {
        let p = tmp("bad");
        assert!(matches!(Pepper::load(&p), Err(PepperError::Missing(x)) if x == p));
        use std::os::unix::fs::PermissionsExt;
        fs::write(&p, "coffer-pepper-v1:abcd\n").unwrap();
        fs::set_permissions(&p, fs::Permissions::from_mode(0o600)).unwrap();
        assert!(matches!(Pepper::load(&p), Err(PepperError::Malformed(_))));
        fs::write(&p, format!("coffer-pepper-v1:{}\n", "00".repeat(32))).unwrap();
        fs::set_permissions(&p, fs::Permissions::from_mode(0o644)).unwrap();
        let err = Pepper::load(&p).err().unwrap();
        assert!(err.to_string().contains(&p.display().to_string()));
        assert!(matches!(err, PepperError::TooOpen(_)));
        fs::remove_file(&p).unwrap();
    }

    #[test]
    fn user_id_known_answer() {
        // HMAC-SHA256(key = 32 x 0x01, u32be(14) "coffer/user-id" u32be(5) "alice"),
        // computed independently with Python's hmac module.
        let pepper = Pepper::from_bytes([1; 32]);
        let id = pepper.user_id(&Username::new("Alice").unwrap());
        assert_eq!(id.to_hex(), KAT_USER_ID);
        let other = Pepper::from_bytes([2; 32]);
        assert_ne!(other.user_id(&Username::new("alice").unwrap()), id);
    }

    #[test]
    fn wrong_pepper_is_detected() {
        let a = Pepper::from_bytes([1; 32]);
        let b = Pepper::from_bytes([2; 32]);
        assert!(a.verify(&a.check_value()).is_ok());
        assert!(matches!(
            b.verify(&a.check_value()),
            Err(PepperError::Mismatch(_))
        ));
    }

    const KAT_USER_ID: &str = "e775356a94fa7f73dd0b05e47f29b21ca2e10513de1c8c694a86cbc25bfc7ad6";
}
