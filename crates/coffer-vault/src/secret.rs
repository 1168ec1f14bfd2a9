//! Secret containers: wiped on drop, never printed.
//!
//! Neither type implements `Display`, and `Debug` prints only `<redacted>`, so a secret
//! cannot reach a log line through `{:?}` by accident.

use std::fmt;
use zeroize::{Zeroize, Zeroizing};

/// 32 secret bytes (a key, a pepper, an Argon2id output).
#[derive(Clone)]
pub struct Secret32(Zeroizing<[u8; 32]>);

impl Secret32 {
    pub fn new(bytes: [u8; 32]) -> Self {
        Secret32(Zeroizing::new(bytes))
    }
    pub fn random() -> Self {
        let mut b = Zeroizing::new([0u8; 32]);
        rand::RngCore::fill_bytes(&mut rand::rngs::OsRng, b.as_mut());
        Secret32(b)
    }
    pub fn expose(&self) -> &[u8; 32] {
        &self.0
    }
}

impl fmt::Debug for Secret32 {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("Secret32(<redacted>)")
    }
}

/// Longest password, app password or recovery code accepted, in bytes.
pub const MAX_PASSWORD_BYTES: usize = 1024;
/// Shortest new account password, in characters (the panel and CLI state this rule).
pub const MIN_NEW_PASSWORD_CHARS: usize = 10;

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum PasswordError {
    #[error("password is empty")]
    Empty,
    #[error("password is longer than {MAX_PASSWORD_BYTES} bytes")]
    TooLong,
    #[error("password is not valid UTF-8")]
    NotUtf8,
    #[error("password must be at least {MIN_NEW_PASSWORD_CHARS} characters")]
    TooShort,
    #[error("password contains a control character")]
    ControlCharacter,
}

/// A password or other typed secret (app password, recovery code), as UTF-8.
pub struct Password(Zeroizing<String>);

impl Password {
    /// Accepts any secret a user may type at login: non-empty, bounded, UTF-8.
    pub fn new(s: &str) -> Result<Self, PasswordError> {
        if s.is_empty() {
            return Err(PasswordError::Empty);
        }
        if s.len() > MAX_PASSWORD_BYTES {
            return Err(PasswordError::TooLong);
        }
        Ok(Password(Zeroizing::new(s.to_string())))
    }

    pub fn from_bytes(b: &[u8]) -> Result<Self, PasswordError> {
        let s = std::str::from_utf8(b).map_err(|_| PasswordError::NotUtf8)?;
        Self::new(s)
    }

    /// Accepts a new account password: also at least [`MIN_NEW_PASSWORD_CHARS`]
    /// characters and no control characters.
    pub fn new_account_password(s: &str) -> Result<Self, PasswordError> {
        let p = Self::new(s)?;
        if s.chars().any(char::is_control) {
            return Err(PasswordError::ControlCharacter);
        }
        if s.chars().count() < MIN_NEW_PASSWORD_CHARS {
            return Err(PasswordError::TooShort);
        }
        Ok(p)
    }

    pub fn expose(&self) -> &str {
        &self.0
    }
}

impl fmt::Debug for Password {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("Password(<redacted>)")
    }
}

/// Byte buffer wiped on drop (decrypted metadata, message bodies in transit).
pub type SecretBytes = Zeroizing<Vec<u8>>;

/// Wipes a value in place; re-exported so callers need not depend on `zeroize`.
pub fn wipe<Z: Zeroize>(z: &mut Z) {
    z.zeroize();
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn debug_never_shows_secrets() {
        let p = Password::new("hunter2-hunter2").unwrap();
        assert!(!format!("{p:?}").contains("hunter2"));
        let s = Secret32::new([0x41; 32]);
        assert!(!format!("{s:?}").contains("41"));
    }

    #[test]
    fn password_rules() {
        assert_eq!(Password::new("").err(), Some(PasswordError::Empty));
        assert_eq!(
            Password::new(&"x".repeat(1025)).err(),
            Some(PasswordError::TooLong)
        );
        assert_eq!(
            Password::from_bytes(b"\xff").err(),
            Some(PasswordError::NotUtf8)
        );
        assert_eq!(
            Password::new_account_password("short").err(),
            Some(PasswordError::TooShort)
        );
        assert_eq!(
            Password::new_account_password("long enough\u{7}x").err(),
            Some(PasswordError::ControlCharacter)
        );
        assert!(Password::new_account_password("correct horse").is_ok());
        // Characters, not bytes: ten accented letters pass.
        assert!(Password::new_account_password(&"é".repeat(10)).is_ok());
    }
}
