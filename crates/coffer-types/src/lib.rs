//! Newtypes shared by every Coffer crate, with no I/O.
//!
//! These types exist so that a UID can never be confused with a sequence number, a
//! mailbox id with a MODSEQ, or a raw username with its canonical form. Everything here is
//! plain data: secrets live in `coffer-vault`, never in this crate.
#![forbid(unsafe_code)]

mod ids;
mod mailbox;
mod username;

pub use ids::{BlobId, Generation, MailboxId, ModSeq, MsgId, SlotId, Uid, UidValidity, UserId};
pub use mailbox::{Flag, MailboxName, MailboxNameError, SpecialUse};
pub use username::{Username, UsernameError};

/// How a user's mail may be restored when every secret the user holds is lost.
///
/// See docs/SECURITY.md: in `High` only secrets held by the user open the key slots; in
/// `Low` an escrow slot sealed to the operator's offline recovery key exists as well.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum SecurityMode {
    High,
    Low,
}

impl SecurityMode {
    pub fn as_str(self) -> &'static str {
        match self {
            SecurityMode::High => "high",
            SecurityMode::Low => "low",
        }
    }
    pub fn code(self) -> u8 {
        match self {
            SecurityMode::High => 1,
            SecurityMode::Low => 2,
        }
    }
    pub fn from_code(code: u8) -> Option<Self> {
        match code {
            1 => Some(SecurityMode::High),
            2 => Some(SecurityMode::Low),
            _ => None,
        }
    }
}

impl std::str::FromStr for SecurityMode {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        match s.to_ascii_lowercase().as_str() {
            "high" => Ok(SecurityMode::High),
            "low" => Ok(SecurityMode::Low),
            other => Err(format!(
                "unknown security mode {other:?}: expected high or low"
            )),
        }
    }
}

impl std::fmt::Display for SecurityMode {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

/// What kind of secret opens a key slot (CRYPTO.md, "Key slots").
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum SlotKind {
    Password,
    AppPassword,
    RecoveryCode,
    Escrow,
}

impl SlotKind {
    pub fn code(self) -> u8 {
        match self {
            SlotKind::Password => 1,
            SlotKind::AppPassword => 2,
            SlotKind::RecoveryCode => 3,
            SlotKind::Escrow => 4,
        }
    }
    pub fn from_code(code: u8) -> Option<Self> {
        match code {
            1 => Some(SlotKind::Password),
            2 => Some(SlotKind::AppPassword),
            3 => Some(SlotKind::RecoveryCode),
            4 => Some(SlotKind::Escrow),
            _ => None,
        }
    }
    pub fn as_str(self) -> &'static str {
        match self {
            SlotKind::Password => "password",
            SlotKind::AppPassword => "app-password",
            SlotKind::RecoveryCode => "recovery-code",
            SlotKind::Escrow => "escrow",
        }
    }
}

/// Hex encoding for ids in logs and on the command line.
pub fn hex(bytes: &[u8]) -> String {
    const DIGITS: &[u8; 16] = b"0123456789abcdef";
    let mut out = String::with_capacity(bytes.len() * 2);
    for b in bytes {
        out.push(DIGITS[(b >> 4) as usize] as char);
        out.push(DIGITS[(b & 15) as usize] as char);
    }
    out
}

/// Parses lowercase or uppercase hex into exactly `N` bytes.
pub fn unhex<const N: usize>(s: &str) -> Option<[u8; N]> {
    let bytes = s.as_bytes();
    if bytes.len() != N * 2 {
        return None;
    }
    let mut out = [0u8; N];
    for (i, pair) in bytes.chunks_exact(2).enumerate() {
        let hi = (pair[0] as char).to_digit(16)?;
        let lo = (pair[1] as char).to_digit(16)?;
        out[i] = (hi * 16 + lo) as u8;
    }
    Some(out)
}
