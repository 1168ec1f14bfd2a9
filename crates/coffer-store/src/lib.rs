//! The storage interface: what Coffer keeps at rest, and nothing that could be read.
//!
//! Every row is keyed by an opaque [`UserId`]; every value that says anything about a
//! person (names, flags, dates, sizes, message bodies) arrives here already sealed by
//! `coffer-vault`. What stays in the clear is only what a server must compare or count
//! without keys: UIDs, UIDVALIDITY, MODSEQs, keyring generations, padded blob lengths and
//! creation times (docs/SECURITY.md lists these leaks).
//!
//! The [`Store`] trait is small on purpose so that the PostgreSQL backend can implement it
//! with the same meaning; [`conformance`] holds the tests every backend must pass.
#![forbid(unsafe_code)]

pub mod conformance;
mod error;
pub mod postgres;
mod rows;
pub mod sqlite;

pub use error::StoreError;
pub use rows::*;

use async_trait::async_trait;
use coffer_types::{
    BlobId, Generation, MailboxId, ModSeq, MsgId, SecurityMode, SlotId, Uid, UserId,
};

pub type Result<T> = std::result::Result<T, StoreError>;

/// Produces a blob's bytes into a writer (see [`Store::put_blob_streamed`]).
pub type BlobWriter = Box<dyn FnOnce(&mut dyn std::io::Write) -> std::io::Result<()> + Send>;

/// A sealed blob being read (see [`Store::open_blob`]).
pub type BlobReader = Box<dyn std::io::BufRead + Send>;

/// Storage for accounts, key slots, mailboxes, messages and sealed blobs.
///
/// Every method that returns `Ok` after a write has made that write durable: a crash
/// (kill -9, power loss after fsync) after the call returns never loses it.
#[async_trait]
pub trait Store: Send + Sync + 'static {
    // --- installation-wide values -------------------------------------------------------

    /// A value from the installation's key/value table (schema version, pepper check).
    async fn get_meta(&self, key: &str) -> Result<Option<Vec<u8>>>;
    /// Sets a key/value entry, replacing any previous value.
    async fn set_meta(&self, key: &str, value: &[u8]) -> Result<()>;

    // --- accounts and keyrings ----------------------------------------------------------

    /// Creates an account with its first keyring, key slots and mailboxes, atomically.
    /// Fails with [`StoreError::Conflict`] if the user id exists.
    async fn create_account(&self, new: NewAccount) -> Result<Vec<MailboxRow>>;
    async fn get_account(&self, user: &UserId) -> Result<Option<AccountRow>>;
    async fn list_accounts(&self) -> Result<Vec<AccountRow>>;
    /// Removes the account and everything it owns, blobs included. Returns false if absent.
    async fn delete_account(&self, user: &UserId) -> Result<bool>;
    /// Sets the security mode and, in the same transaction, replaces the escrow slot:
    /// `escrow` is inserted for low mode; every escrow slot is removed otherwise.
    async fn set_mode(
        &self,
        user: &UserId,
        mode: SecurityMode,
        escrow: Option<SlotRow>,
    ) -> Result<()>;
    /// Starts a new keyring generation: the account's generation becomes
    /// `keyring.generation`, the given slots and mailboxes are added and INBOX moves to the
    /// new one. Rows of older generations are kept untouched.
    async fn reset_keyring(
        &self,
        user: &UserId,
        keyring: KeyringRow,
        slots: Vec<SlotRow>,
        mailboxes: Vec<NewMailbox>,
    ) -> Result<Vec<MailboxRow>>;
    async fn list_keyrings(&self, user: &UserId) -> Result<Vec<KeyringRow>>;
    async fn list_links(&self, user: &UserId) -> Result<Vec<KeyringLinkRow>>;
    /// Stores a link that makes an old generation readable from a newer one and removes
    /// every slot of the old generation, atomically.
    async fn put_link(&self, link: KeyringLinkRow) -> Result<()>;

    // --- key slots ----------------------------------------------------------------------

    async fn find_slot(&self, user: &UserId, locator: &[u8; 32]) -> Result<Option<SlotRow>>;
    async fn list_slots(&self, user: &UserId) -> Result<Vec<SlotRow>>;
    /// Adds and removes slots in one transaction (password change, revoke, new code).
    async fn replace_slots(
        &self,
        user: &UserId,
        add: Vec<SlotRow>,
        remove: Vec<SlotId>,
    ) -> Result<()>;
    /// Records the last use of a slot (seconds since the epoch).
    async fn touch_slot(&self, user: &UserId, slot: &SlotId, when: i64) -> Result<()>;

    // --- mailboxes ----------------------------------------------------------------------

    async fn list_mailboxes(&self, user: &UserId) -> Result<Vec<MailboxRow>>;
    async fn get_mailbox(&self, user: &UserId, id: MailboxId) -> Result<Option<MailboxRow>>;
    async fn find_mailbox(&self, user: &UserId, lookup: &[u8; 32]) -> Result<Option<MailboxRow>>;
    /// Creates a mailbox with a fresh UIDVALIDITY. Conflict if `lookup` is taken.
    async fn create_mailbox(&self, user: &UserId, new: NewMailbox) -> Result<MailboxRow>;
    /// Replaces the sealed name/attributes and lookup of a mailbox (rename, subscribe).
    async fn update_mailbox(
        &self,
        user: &UserId,
        id: MailboxId,
        generation: Generation,
        sealed: Vec<u8>,
        lookup: [u8; 32],
    ) -> Result<()>;
    /// Deletes a mailbox and its messages; blobs no longer referenced are removed.
    async fn delete_mailbox(&self, user: &UserId, id: MailboxId) -> Result<()>;

    // --- messages -----------------------------------------------------------------------

    /// Appends messages whose blobs are already stored, allocating consecutive UIDs and one
    /// new MODSEQ. Returns the UIDs in input order and the MODSEQ.
    async fn append(
        &self,
        user: &UserId,
        mailbox: MailboxId,
        messages: Vec<NewMessage>,
    ) -> Result<(Vec<Uid>, ModSeq)>;
    /// Total stored (padded, sealed) bytes of a user's messages: what quota checks use when
    /// no key is at hand (delivery). A copy shares its blob but counts again.
    async fn stored_bytes(&self, user: &UserId) -> Result<u64>;
    /// All messages of a mailbox in UID order.
    async fn list_messages(&self, user: &UserId, mailbox: MailboxId) -> Result<Vec<MessageRow>>;
    /// The messages with the given UIDs (absent ones skipped), in UID order.
    async fn get_messages(
        &self,
        user: &UserId,
        mailbox: MailboxId,
        uids: Vec<Uid>,
    ) -> Result<Vec<MessageRow>>;
    /// UIDs, MODSEQs and sealed flags of a mailbox in UID order, without the metadata:
    /// what opening a mailbox needs, cheaply.
    async fn list_flags(&self, user: &UserId, mailbox: MailboxId) -> Result<Vec<FlagRow>>;
    /// What changed in a mailbox since MODSEQ `since`: the rows whose MODSEQ is above it
    /// (appended, moved in, flags changed), in UID order, and the UIDs expunged or moved
    /// away with a MODSEQ above it. The rows are read before the expunged UIDs, so a row
    /// expunged meanwhile is in the second list. Applied to a view of the mailbox as of
    /// `since`, it gives the view as of now. The default filters [`Store::list_flags`].
    async fn flags_changed_since(
        &self,
        user: &UserId,
        mailbox: MailboxId,
        since: u64,
    ) -> Result<(Vec<FlagRow>, Vec<Uid>)> {
        let mut rows = self.list_flags(user, mailbox).await?;
        rows.retain(|r| r.modseq.get() > since);
        let gone = self.expunged_since(user, mailbox, since).await?;
        Ok((rows, gone))
    }
    async fn get_message(
        &self,
        user: &UserId,
        mailbox: MailboxId,
        uid: Uid,
    ) -> Result<Option<MessageRow>>;
    /// Replaces sealed flags of the given messages under one new MODSEQ. Messages whose
    /// MODSEQ exceeds `unchanged_since` are left alone and reported in `FlagUpdate::skipped`
    /// (RFC 7162 §3.1.3); absent UIDs are ignored.
    async fn set_flags(
        &self,
        user: &UserId,
        mailbox: MailboxId,
        changes: Vec<(Uid, Vec<u8>)>,
        unchanged_since: Option<u64>,
    ) -> Result<FlagUpdate>;
    /// Re-seals the metadata of a message that delivery sealed to the public key under the
    /// index key; no MODSEQ change. Only a row still sealed by delivery is changed (so two
    /// sessions resealing at once cannot undo each other), and its flags are set to
    /// `empty_flags` only if no session has stored flags meanwhile. Returns whether the row
    /// was changed.
    async fn reseal_message(
        &self,
        user: &UserId,
        msg: &MsgId,
        seal: SealRef,
        sealed_meta: Vec<u8>,
        empty_flags: Vec<u8>,
    ) -> Result<bool>;
    /// Replaces the sealed metadata of messages still sealed as their `SealRef` says (the
    /// FETCH summary cache, filled in for rows stored before it existed). No MODSEQ moves
    /// and no change is announced: nothing a client sees changes. Returns the rows changed.
    async fn replace_sealed_meta(
        &self,
        user: &UserId,
        rows: Vec<(MsgId, SealRef, Vec<u8>)>,
    ) -> Result<usize>;
    /// Removes messages, records them for QRESYNC, deletes blobs no longer referenced.
    /// Returns the UIDs actually removed and the new MODSEQ (None if nothing was removed).
    async fn expunge(
        &self,
        user: &UserId,
        mailbox: MailboxId,
        uids: Vec<Uid>,
    ) -> Result<(Vec<Uid>, Option<ModSeq>)>;
    /// Moves messages to another mailbox of the same user, keeping their message ids and
    /// sealed data: new UIDs in `to`, expunge records in `from`. Returns (old, new) pairs.
    async fn move_messages(
        &self,
        user: &UserId,
        from: MailboxId,
        uids: Vec<Uid>,
        to: MailboxId,
    ) -> Result<Vec<(Uid, Uid)>>;
    /// UIDs expunged from a mailbox with a MODSEQ above `since`.
    async fn expunged_since(
        &self,
        user: &UserId,
        mailbox: MailboxId,
        since: u64,
    ) -> Result<Vec<Uid>>;

    // --- blobs --------------------------------------------------------------------------

    /// Stores a sealed blob durably. The data must already be ciphertext.
    async fn put_blob(&self, user: &UserId, blob: &BlobId, data: Vec<u8>) -> Result<()>;
    /// Stores a blob that `write` produces (ciphertext, sealed as it streams), durably,
    /// and returns its length. Backends that can write straight to their blob storage do
    /// so; the default collects it in memory first.
    async fn put_blob_streamed(
        &self,
        user: &UserId,
        blob: &BlobId,
        write: BlobWriter,
    ) -> Result<u64> {
        let mut data = Vec::new();
        write(&mut data).map_err(|e| StoreError::io("sealing a blob", e))?;
        let len = data.len() as u64;
        self.put_blob(user, blob, data).await?;
        Ok(len)
    }
    async fn get_blob(&self, user: &UserId, blob: &BlobId) -> Result<Vec<u8>>;
    /// A sealed blob as a reader, to be read on a blocking thread, so a large body can be
    /// decrypted as it streams instead of read whole first. The default reads it whole.
    async fn open_blob(&self, user: &UserId, blob: &BlobId) -> Result<BlobReader> {
        Ok(Box::new(std::io::Cursor::new(
            self.get_blob(user, blob).await?,
        )))
    }

    // --- maintenance --------------------------------------------------------------------

    /// A number that changes whenever another connection or process has committed a
    /// change (SQLite's `PRAGMA data_version`). A server polls it to learn of changes made
    /// outside its own process (the CLI, `coffer deliver`).
    async fn data_version(&self) -> Result<u64>;

    /// Checks structural integrity without any key: database consistency, every
    /// referenced blob present with its recorded length. Returns the problems found.
    async fn check(&self) -> Result<Vec<String>>;
    /// Removes blobs older than `min_age_secs` that no row references (left by a crash
    /// between writing a blob and committing its row). Returns how many were removed.
    async fn sweep_orphans(&self, min_age_secs: u64) -> Result<usize>;
}
