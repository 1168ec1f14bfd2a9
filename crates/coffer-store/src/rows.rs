//! Row types exchanged with a [`crate::Store`]. `sealed*` fields are ciphertext produced by
//! the vault; the store never interprets them.

use coffer_types::{
    BlobId, Generation, MailboxId, ModSeq, MsgId, SecurityMode, SlotId, SlotKind, Uid, UidValidity,
    UserId,
};

/// One account. `sealed_name` is the canonical username sealed under the directory key.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct AccountRow {
    pub user_id: UserId,
    pub sealed_name: Vec<u8>,
    pub generation: Generation,
    pub mode: SecurityMode,
    /// Per-account Argon2id salt (16 bytes), shared by all password-like slots so that a
    /// login runs one Argon2id whichever secret the user typed.
    pub kdf_salt: [u8; 16],
    /// INBOX of the current generation: delivery needs it without any key.
    pub inbox: Option<MailboxId>,
    pub created: i64,
}

/// The public half of one keyring generation.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct KeyringRow {
    pub user_id: UserId,
    pub generation: Generation,
    pub public_key: [u8; 32],
    pub created: i64,
}

/// The master key of generation `generation`, sealed under the master key of
/// `sealed_under` (a later generation): how a reset account reopens its old mail.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct KeyringLinkRow {
    pub user_id: UserId,
    pub generation: Generation,
    pub sealed_under: Generation,
    pub wrapped: Vec<u8>,
}

/// Argon2id cost parameters recorded with each password-like slot (RFC 9106 §3.1).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct KdfParams {
    pub memory_kib: u32,
    pub time_cost: u32,
    pub parallelism: u32,
}

/// A key slot: the master key of `generation` wrapped under a key derived from one secret.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct SlotRow {
    pub user_id: UserId,
    pub slot_id: SlotId,
    pub kind: SlotKind,
    pub generation: Generation,
    /// HKDF(Argon2id output, "coffer/slot-locator"); None for escrow slots.
    pub locator: Option<[u8; 32]>,
    /// Cost the slot's secret was stretched with; None for escrow slots.
    pub kdf: Option<KdfParams>,
    pub wrapped: Vec<u8>,
    /// Label of an app password, sealed under the index key.
    pub sealed_label: Option<Vec<u8>>,
    pub created: i64,
    pub last_used: Option<i64>,
}

/// A new mailbox. The store allocates its id and UIDVALIDITY.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct NewMailbox {
    pub generation: Generation,
    /// Name, special-use role and subscription, sealed under the index key.
    pub sealed: Vec<u8>,
    /// Keyed hash of (user, generation, name) so that delivery can find a named mailbox
    /// without keys and the store can refuse duplicate names.
    pub lookup: [u8; 32],
    /// True for the INBOX of a new account or keyring.
    pub is_inbox: bool,
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct MailboxRow {
    pub user_id: UserId,
    pub id: MailboxId,
    pub generation: Generation,
    pub sealed: Vec<u8>,
    pub lookup: [u8; 32],
    pub uid_validity: UidValidity,
    pub uid_next: u32,
    pub highest_modseq: u64,
    pub created: i64,
}

/// Which key sealed a message's metadata.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum SealRef {
    /// XChaCha20-Poly1305 under the index key of this generation (the normal case).
    IndexKey(Generation),
    /// Sealed to the public key of this generation by delivery while the user was away.
    PublicKey(Generation),
}

impl SealRef {
    pub fn generation(self) -> Generation {
        match self {
            SealRef::IndexKey(g) | SealRef::PublicKey(g) => g,
        }
    }
    pub fn kind_code(self) -> u8 {
        match self {
            SealRef::IndexKey(_) => 1,
            SealRef::PublicKey(_) => 2,
        }
    }
    pub fn from_parts(kind: u8, generation: Generation) -> Option<Self> {
        match kind {
            1 => Some(SealRef::IndexKey(generation)),
            2 => Some(SealRef::PublicKey(generation)),
            _ => None,
        }
    }
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct NewMessage {
    pub msg_id: MsgId,
    pub blob_id: BlobId,
    /// Length of the stored (padded, sealed) blob in bytes.
    pub blob_len: u64,
    pub seal: SealRef,
    pub sealed_meta: Vec<u8>,
    /// Flags and keywords sealed under the index key; None means no flags.
    pub sealed_flags: Option<Vec<u8>>,
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct MessageRow {
    pub mailbox: MailboxId,
    pub uid: Uid,
    pub modseq: ModSeq,
    pub msg_id: MsgId,
    pub blob_id: BlobId,
    pub blob_len: u64,
    pub seal: SealRef,
    pub sealed_meta: Vec<u8>,
    pub sealed_flags: Option<Vec<u8>>,
}

/// The flag columns of one message (see [`crate::Store::list_flags`]).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct FlagRow {
    pub uid: Uid,
    pub modseq: ModSeq,
    pub msg_id: MsgId,
    pub seal: SealRef,
    pub sealed_flags: Option<Vec<u8>>,
}

/// Outcome of [`crate::Store::set_flags`].
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct FlagUpdate {
    /// Messages changed, all with this one MODSEQ.
    pub changed: Vec<Uid>,
    pub modseq: Option<ModSeq>,
    /// Messages not changed because they were modified after `unchanged_since`.
    pub skipped: Vec<Uid>,
}

/// Everything created with an account, in one transaction.
#[derive(Clone, Debug)]
pub struct NewAccount {
    pub account: AccountRow,
    pub keyring: KeyringRow,
    pub slots: Vec<SlotRow>,
    pub mailboxes: Vec<NewMailbox>,
}

/// One expunge record (mailbox, UID, MODSEQ of the expunge), as stored.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ExpungedRow {
    pub mailbox: MailboxId,
    pub uid: Uid,
    pub modseq: ModSeq,
}

/// Every row a store holds for one user, exactly as stored (still sealed): what
/// `coffer migrate` copies from one backend to another. Blobs travel separately.
#[derive(Clone, Debug)]
pub struct UserExport {
    pub account: AccountRow,
    pub keyrings: Vec<KeyringRow>,
    pub links: Vec<KeyringLinkRow>,
    pub slots: Vec<SlotRow>,
    pub mailboxes: Vec<MailboxRow>,
    pub messages: Vec<MessageRow>,
    pub expunged: Vec<ExpungedRow>,
}
