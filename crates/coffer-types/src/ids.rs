//! Identifier newtypes: opaque user ids, UIDs (RFC 9051 §2.3.1.1), MODSEQs (RFC 7162),
//! mailbox ids, keyring generations and random row ids.

use std::fmt;
use std::num::{NonZeroU32, NonZeroU64};

macro_rules! random_id {
    ($(#[$doc:meta])* $name:ident, $len:expr) => {
        $(#[$doc])*
        #[derive(Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
        pub struct $name(pub [u8; $len]);

        impl $name {
            pub fn as_bytes(&self) -> &[u8; $len] {
                &self.0
            }
            pub fn from_slice(bytes: &[u8]) -> Option<Self> {
                <[u8; $len]>::try_from(bytes).ok().map($name)
            }
            pub fn to_hex(&self) -> String {
                crate::hex(&self.0)
            }
            pub fn from_hex(s: &str) -> Option<Self> {
                crate::unhex::<$len>(s).map($name)
            }
        }

        impl fmt::Debug for $name {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                write!(f, "{}({})", stringify!($name), self.to_hex())
            }
        }

        impl fmt::Display for $name {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str(&self.to_hex())
            }
        }
    };
}

random_id!(
    /// The only key under which a user's rows are stored:
    /// HMAC-SHA256(pepper, "coffer/user-id" || canonical username). Not secret, but
    /// reveals nothing of the username without the pepper.
    UserId,
    32
);
random_id!(
    /// Random id of a message row; stays the same when the message moves between mailboxes.
    MsgId,
    16
);
random_id!(
    /// Random id of a sealed message blob; unrelated to its content or owner.
    BlobId,
    16
);
random_id!(
    /// Random public id of a key slot, used to list and revoke app passwords.
    SlotId,
    16
);

/// A message UID: strictly ascending within a mailbox and never reused (RFC 9051 §2.3.1.1).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Uid(pub NonZeroU32);

impl Uid {
    pub fn new(v: u32) -> Option<Self> {
        NonZeroU32::new(v).map(Uid)
    }
    pub fn get(self) -> u32 {
        self.0.get()
    }
}

impl fmt::Display for Uid {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}", self.0)
    }
}

/// UIDVALIDITY of a mailbox (RFC 9051 §2.3.1.1): changes only if UIDs are reassigned.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct UidValidity(pub NonZeroU32);

impl UidValidity {
    pub fn new(v: u32) -> Option<Self> {
        NonZeroU32::new(v).map(UidValidity)
    }
    pub fn get(self) -> u32 {
        self.0.get()
    }
}

/// A modification sequence (RFC 7162 §3.1): per mailbox, strictly increasing.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct ModSeq(pub NonZeroU64);

impl ModSeq {
    pub fn new(v: u64) -> Option<Self> {
        NonZeroU64::new(v).map(ModSeq)
    }
    pub fn get(self) -> u64 {
        self.0.get()
    }
}

/// A mailbox row id, allocated by the store; not an IMAP-visible value.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct MailboxId(pub i64);

impl fmt::Display for MailboxId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}", self.0)
    }
}

/// Keyring generation of a user: 1 at account creation, incremented by each reset.
/// Every sealed value records the generation whose keys sealed it.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Generation(pub u32);

impl fmt::Display for Generation {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}", self.0)
    }
}
