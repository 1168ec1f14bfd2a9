//! Usernames and their canonical form, the input to the opaque user id.
//!
//! Canonicalisation is Unicode NFC followed by lowercasing, so that `Alice`, `alice` and a
//! decomposed `alíce` name the same account. The canonical form is what is hashed into the
//! user id and what is sealed in the account row; the raw form is never stored.

use std::fmt;
use unicode_normalization::UnicodeNormalization;

/// Longest canonical username accepted, in bytes.
pub const MAX_USERNAME_BYTES: usize = 255;

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum UsernameError {
    #[error("username is empty")]
    Empty,
    #[error("username is longer than {MAX_USERNAME_BYTES} bytes")]
    TooLong,
    #[error("username is not valid UTF-8")]
    NotUtf8,
    #[error("username may contain only letters, digits and . - _ @ (no spaces, no +)")]
    BadCharacter,
}

/// A canonical, validated username. Its `Debug` form hides the name: usernames are
/// personal data and must not reach logs.
#[derive(Clone, PartialEq, Eq, Hash)]
pub struct Username(String);

impl Username {
    pub fn new(raw: &str) -> Result<Self, UsernameError> {
        let canonical: String = raw.nfc().collect::<String>().to_lowercase();
        if canonical.is_empty() {
            return Err(UsernameError::Empty);
        }
        if canonical.len() > MAX_USERNAME_BYTES {
            return Err(UsernameError::TooLong);
        }
        // `+` is reserved for address details (user+tag@domain), as in Postfix and Dovecot.
        let ok = canonical
            .chars()
            .all(|c| c.is_alphanumeric() || matches!(c, '.' | '-' | '_' | '@'));
        if !ok {
            return Err(UsernameError::BadCharacter);
        }
        Ok(Username(canonical))
    }

    pub fn from_bytes(raw: &[u8]) -> Result<Self, UsernameError> {
        let s = std::str::from_utf8(raw).map_err(|_| UsernameError::NotUtf8)?;
        Self::new(s)
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl fmt::Debug for Username {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("Username(<hidden>)")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn canonical_form_is_nfc_lowercase() {
        let composed = Username::new("Al\u{00ed}ce").unwrap();
        let decomposed = Username::new("ALI\u{0301}CE").unwrap();
        assert_eq!(composed, decomposed);
        assert_eq!(composed.as_str(), "al\u{00ed}ce");
    }

    #[test]
    fn bad_usernames() {
        assert_eq!(Username::new(""), Err(UsernameError::Empty));
        assert_eq!(Username::new("a b"), Err(UsernameError::BadCharacter));
        assert_eq!(Username::new("a+b"), Err(UsernameError::BadCharacter));
        assert_eq!(Username::new("a\0"), Err(UsernameError::BadCharacter));
        assert_eq!(Username::new(&"a".repeat(256)), Err(UsernameError::TooLong));
        assert_eq!(
            Username::from_bytes(b"\xff\xfe"),
            Err(UsernameError::NotUtf8)
        );
        assert!(Username::new("alice@example.org").is_ok());
    }

    #[test]
    fn debug_hides_the_name() {
        let u = Username::new("secretperson").unwrap();
        assert!(!format!("{u:?}").contains("secretperson"));
    }
}
