//! The mailbox model, free of any protocol: mailboxes with sealed names, messages with
//! sealed bodies, metadata and flags, UIDs and MODSEQs, expunge, copy and move, and the
//! delivery path that holds only a user's public key.
//!
//! Every operation that reads or writes sealed data takes an [`Unlocked`] session, the
//! vault's proof that the user's keyring is open. [`deliver`] is the one exception: it
//! seals to the public key and never needs the keyring (CRYPTO.md, "Delivery while the
//! user is away").
#![forbid(unsafe_code)]

mod changes;
pub mod codec;
mod deliver;
mod error;
pub mod invites;
pub mod mime;

pub use changes::Changes;
pub use codec::{MailboxInfo, MessageMeta, Summary};
pub use deliver::{Delivered, deliver, deliver_owned};
pub use error::MailError;

use coffer_store::{FlagUpdate, MailboxRow, MessageRow, NewMailbox, NewMessage, SealRef};
use coffer_types::{
    BlobId, Flag, Generation, MailboxId, MailboxName, ModSeq, MsgId, SecurityMode, SpecialUse, Uid,
    UidValidity, UserId,
};
use coffer_vault::{Keyring, Pepper, Place, Unlocked, Vault};
use std::sync::Arc;
use zeroize::Zeroizing;

pub type Result<T> = std::result::Result<T, MailError>;

/// Largest message accepted by append and delivery unless the config says less.
pub const DEFAULT_MAX_MESSAGE_BYTES: u64 = 64 * 1024 * 1024;

/// A mailbox as its owner sees it.
#[derive(Clone, PartialEq, Eq)]
pub struct Mailbox {
    pub id: MailboxId,
    pub name: MailboxName,
    pub special_use: Option<SpecialUse>,
    pub subscribed: bool,
    pub uid_validity: UidValidity,
    pub uid_next: u32,
    pub highest_modseq: u64,
    pub generation: Generation,
}

impl std::fmt::Debug for Mailbox {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Mailbox")
            .field("id", &self.id)
            .finish_non_exhaustive()
    }
}

/// A message as its owner sees it, without its body.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Message {
    pub uid: Uid,
    pub modseq: ModSeq,
    pub msg_id: MsgId,
    pub blob_id: BlobId,
    pub seal: SealRef,
    pub size: u64,
    pub internal_date: i64,
    pub tz_offset_minutes: i16,
    pub flags: Vec<Flag>,
    /// FETCH answers kept in the sealed metadata; `None` for rows stored before it existed
    /// (FETCH then computes them from the body and [`Mail::remember_summaries`] keeps them).
    pub summary: Option<Arc<Summary>>,
}

/// Which sealed columns of a message row to open.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Columns {
    /// The metadata and the flags.
    All,
    /// The metadata only: [`Message::flags`] is left empty. For callers that take flags
    /// from elsewhere, as FETCH takes them from the session's view; it saves one
    /// XChaCha20-Poly1305 open per message (about 1.5 µs each).
    MetaOnly,
}

/// How STORE combines flags (RFC 9051 §6.4.6).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum FlagOp {
    Replace,
    Add,
    Remove,
}

/// INTERNALDATE for an append: seconds since the epoch and zone offset in minutes.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct InternalDate {
    pub timestamp: i64,
    pub tz_offset_minutes: i16,
}

impl InternalDate {
    pub fn now() -> Self {
        InternalDate {
            timestamp: std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .map(|d| d.as_secs() as i64)
                .unwrap_or(0),
            tz_offset_minutes: 0,
        }
    }
}

/// Delivered rows re-sealed at once on their first read (see `Mail::open_rows`).
const RESEAL_BATCH: usize = 256;

/// Plaintext chunk size of [`Mail::body_chunks`], and how many chunks may wait decrypted
/// while the connection sends: about 1 MiB of plaintext in memory per streaming FETCH.
const BODY_CHUNK: usize = 256 * 1024;
const BODY_CHUNKS_AHEAD: usize = 3;

/// The decrypted chunks of one message body, from [`Mail::body_chunks`].
pub struct BodyChunks {
    chunks: tokio::sync::mpsc::Receiver<Result<Zeroizing<Vec<u8>>>>,
    give_back: std::sync::mpsc::Sender<Zeroizing<Vec<u8>>>,
}

impl BodyChunks {
    /// The next chunk; `None` after the last. An `Err` ends the stream.
    pub async fn recv(&mut self) -> Option<Result<Zeroizing<Vec<u8>>>> {
        self.chunks.recv().await
    }

    /// Hands a chunk that has been sent back for the next one to be decrypted into. A chunk
    /// not given back is wiped when dropped; so are those given back, when the stream ends.
    pub fn give_back(&self, chunk: Zeroizing<Vec<u8>>) {
        // If the decrypting thread has finished, the chunk is dropped (and wiped) here.
        let _ = self.give_back.send(chunk);
    }
}

/// Bodies at least this large are summarised on a blocking thread: parsing megabytes of
/// MIME would stall the async workers.
const SUMMARY_INLINE_MAX: usize = 256 * 1024;

/// The summary of a message about to be stored (one MIME parse of the plaintext, which is
/// in memory anyway), with the body handed back wrapped to be wiped on drop.
async fn summarize(body: Vec<u8>) -> Result<(Zeroizing<Vec<u8>>, Summary)> {
    let body = Zeroizing::new(body);
    if body.len() < SUMMARY_INLINE_MAX {
        let summary = mime::summary(&body);
        return Ok((body, summary));
    }
    tokio::task::spawn_blocking(move || {
        let summary = mime::summary(&body);
        (body, summary)
    })
    .await
    .map_err(|e| {
        MailError::Store(coffer_store::StoreError::Unavailable(format!(
            "summary task failed: {e}"
        )))
    })
}

/// The mailboxes a new account (or a new keyring after a reset) starts with: INBOX and
/// the RFC 6154 special-use mailboxes, all subscribed.
pub fn default_mailboxes(ring: &Keyring, pepper: &Pepper) -> Vec<NewMailbox> {
    let mut specs: Vec<(MailboxName, Option<SpecialUse>)> = vec![(MailboxName::inbox(), None)];
    for (name, role) in SpecialUse::defaults() {
        specs.push((
            MailboxName::new(name).expect("static names are valid"),
            Some(role),
        ));
    }
    // Random creation order: row ids and UIDVALIDITYs then say nothing about which
    // mailbox is Sent or Junk.
    use rand::seq::SliceRandom;
    specs.shuffle(&mut rand::rngs::OsRng);
    specs
        .into_iter()
        .map(|(name, special_use)| new_mailbox_row(ring, pepper, name, special_use, true))
        .collect()
}

fn new_mailbox_row(
    ring: &Keyring,
    pepper: &Pepper,
    name: MailboxName,
    special_use: Option<SpecialUse>,
    subscribed: bool,
) -> NewMailbox {
    let generation = ring.current_generation();
    let lookup = pepper.mailbox_lookup(ring.user_id(), generation, &name);
    let is_inbox = name.is_inbox();
    let info = MailboxInfo {
        name,
        special_use,
        subscribed,
    };
    let (_, sealed) = ring.seal(Place::Mailbox(&lookup), &info.encode());
    NewMailbox {
        generation,
        sealed,
        lookup,
        is_inbox,
    }
}

/// Mailboxes at least this large decrypt their flags in parallel.
const PARALLEL_FLAGS_MIN: usize = 4096;

/// Decrypted flags by (mailbox, message) with the MODSEQ they were read at, kept in the
/// keyring's cache (see `Keyring::with_cache`).
type FlagsCache = std::collections::HashMap<(MailboxId, MsgId), (ModSeq, Arc<[Flag]>)>;
/// Entries kept per user before the cache starts over (about 100 bytes each, so ~30 MB).
const FLAGS_CACHE_MAX: usize = 300_000;

/// Whole mailbox views by mailbox (see [`Mail::flags_view`]); at most [`FLAGS_CACHE_MAX`]
/// entries in all.
type ViewCache = std::collections::HashMap<MailboxId, CachedView>;

struct CachedView {
    /// The (UIDNEXT, HIGHESTMODSEQ, keyring generations) the view was read at.
    stamp: (u32, u64, usize),
    view: Arc<Vec<FlagsEntry>>,
    /// SELECT's summary of this very view, once a SELECT has asked for it.
    summary: Option<Arc<ViewSummary>>,
}

/// What SELECT announces of a view besides its length, kept with the cached view (see
/// [`Mail::select_view`]) so that reopening an unchanged mailbox does not walk every
/// message again.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct ViewSummary {
    /// The keywords set on at least one message, sorted, each once.
    pub keywords: Vec<String>,
    /// Position (from 0) in the view of the first message without `\Seen`.
    pub first_unseen: Option<usize>,
}

impl ViewSummary {
    pub fn of(view: &[FlagsEntry]) -> Self {
        let mut keywords: Vec<String> = Vec::new();
        let mut first_unseen = None;
        for (i, m) in view.iter().enumerate() {
            let mut seen = false;
            for f in m.flags.iter() {
                match f {
                    Flag::Seen => seen = true,
                    // Few distinct keywords in practice: a sorted Vec beats a set here.
                    Flag::Keyword(k) => {
                        if let Err(at) = keywords.binary_search(k) {
                            keywords.insert(at, k.clone());
                        }
                    }
                    _ => {}
                }
            }
            if !seen && first_unseen.is_none() {
                first_unseen = Some(i);
            }
        }
        ViewSummary {
            keywords,
            first_unseen,
        }
    }
}

/// `old` (a view in UID order) with the rows of `changed_uids` and `gone` taken out and
/// `fresh` (the changed rows' entries, in UID order) put in: the view as of now.
fn apply_changes(
    old: &[FlagsEntry],
    changed_uids: &[Uid],
    gone: &[Uid],
    fresh: Vec<FlagsEntry>,
) -> Vec<FlagsEntry> {
    let gone: std::collections::HashSet<Uid> = gone.iter().copied().collect();
    let drop: std::collections::HashSet<Uid> = changed_uids.iter().chain(&gone).copied().collect();
    let mut out = Vec::with_capacity(old.len() + fresh.len());
    // A row read as changed and then expunged is in both lists: it is gone.
    let mut fresh = fresh
        .into_iter()
        .filter(|f| !gone.contains(&f.uid))
        .peekable();
    for e in old.iter().filter(|e| !drop.contains(&e.uid)) {
        while let Some(f) = fresh.next_if(|f| f.uid < e.uid) {
            out.push(f);
        }
        out.push(e.clone());
    }
    out.extend(fresh);
    out
}

fn decrypt_flags(k: &Keyring, rows: &[coffer_store::FlagRow]) -> Result<Vec<FlagsEntry>> {
    let mut out = Vec::with_capacity(rows.len());
    for row in rows {
        let g = row.seal.generation();
        if !k.has_generation(g) {
            continue;
        }
        let flags = match &row.sealed_flags {
            Some(f) => {
                let plain = k.open(g, Place::MessageFlags(row.msg_id.as_bytes()), f)?;
                codec::decode_flags(&plain)
                    .map_err(|_| MailError::Tampered(format!("flags of message {}", row.msg_id)))?
            }
            None => Vec::new(),
        };
        out.push(FlagsEntry {
            uid: row.uid,
            modseq: row.modseq,
            flags: flags.into(),
        });
    }
    Ok(out)
}

/// The mailbox model over a vault (and through it, the store).
#[derive(Clone)]
pub struct Mail {
    vault: Arc<Vault>,
    max_message_bytes: u64,
    changes: Arc<Changes>,
}

/// Flags of one message as a selected-mailbox view needs them (no metadata decrypted).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct FlagsEntry {
    pub uid: Uid,
    pub modseq: ModSeq,
    /// Shared, so that copying a mailbox's view (SELECT of a cached view: one entry per
    /// message) costs a reference count per message instead of an allocation.
    pub flags: Arc<[Flag]>,
}

impl Mail {
    pub fn new(vault: Arc<Vault>) -> Self {
        Mail {
            vault,
            max_message_bytes: DEFAULT_MAX_MESSAGE_BYTES,
            changes: Arc::new(Changes::default()),
        }
    }

    /// The change notifications of this process.
    pub fn changes(&self) -> &Arc<Changes> {
        &self.changes
    }

    fn changed(&self, session: &Unlocked, mailbox: MailboxId) {
        self.changes.notify(session.user_id(), mailbox);
    }

    /// Delivers to a user who may be away (see [`deliver`]) and tells their sessions.
    pub async fn deliver(
        &self,
        user: &UserId,
        mailbox: Option<&MailboxName>,
        body: Vec<u8>,
        date: InternalDate,
    ) -> Result<Delivered> {
        if body.len() as u64 > self.max_message_bytes {
            return Err(MailError::TooLarge(self.max_message_bytes));
        }
        let d = deliver::deliver_owned(
            self.store().as_ref(),
            self.vault.pepper(),
            user,
            mailbox,
            body,
            date,
        )
        .await?;
        self.changes.notify(user, d.mailbox);
        Ok(d)
    }

    /// Flags of some messages of a mailbox (absent UIDs are skipped).
    pub async fn flags_for(
        &self,
        session: &Unlocked,
        mailbox: MailboxId,
        uids: &[Uid],
    ) -> Result<Vec<FlagsEntry>> {
        let mut out = Vec::with_capacity(uids.len());
        for uid in uids {
            let Some(row) = self
                .store()
                .get_message(session.user_id(), mailbox, *uid)
                .await?
            else {
                continue;
            };
            let g = row.seal.generation();
            let flags = match &row.sealed_flags {
                Some(f) => {
                    let plain = session
                        .with(|k| k.open(g, Place::MessageFlags(row.msg_id.as_bytes()), f))??;
                    codec::decode_flags(&plain).map_err(|_| {
                        MailError::Tampered(format!("flags of message {}", row.msg_id))
                    })?
                }
                None => Vec::new(),
            };
            out.push(FlagsEntry {
                uid: row.uid,
                modseq: row.modseq,
                flags: flags.into(),
            });
        }
        Ok(out)
    }

    /// UIDs, MODSEQs and flags of a mailbox, decrypting only the flags: what SELECT and the
    /// change checks of an open mailbox need.
    ///
    /// The whole view is kept in the keyring's cache (wiped with the keys) under the
    /// mailbox's UIDNEXT and HIGHESTMODSEQ: every append, flag change, expunge and move
    /// raises one of them (in both backends), so while they are the same the view is too,
    /// and reopening an unchanged mailbox reads one mailbox row instead of every message.
    pub async fn flags_view(
        &self,
        session: &Unlocked,
        mailbox: MailboxId,
    ) -> Result<Arc<Vec<FlagsEntry>>> {
        let row = self
            .store()
            .get_mailbox(session.user_id(), mailbox)
            .await?
            .ok_or(MailError::NoSuchMailbox)?;
        self.flags_view_at(session, mailbox, row.uid_next, row.highest_modseq)
            .await
    }

    /// [`Mail::flags_view`] for a caller that has just read the mailbox's UIDNEXT and
    /// HIGHESTMODSEQ (SELECT, STATUS, the change check of a selected mailbox): they must
    /// have been read before this call, so the rows it reads are at least as new.
    pub async fn flags_view_at(
        &self,
        session: &Unlocked,
        mailbox: MailboxId,
        uid_next: u32,
        highest_modseq: u64,
    ) -> Result<Arc<Vec<FlagsEntry>>> {
        let stamp = session.with(|k| (uid_next, highest_modseq, k.generation_count()))?;
        let hit = session.with(|k| {
            k.with_cache(|views: &mut ViewCache| {
                views
                    .get(&mailbox)
                    .filter(|c| c.stamp == stamp)
                    .map(|c| c.view.clone())
            })
        })?;
        if let Some(view) = hit {
            return Ok(view);
        }
        // A view of an earlier state with the same keys: read only what changed since
        // (every change raises a row's MODSEQ or leaves an expunge record above it).
        let earlier = session.with(|k| {
            k.with_cache(|views: &mut ViewCache| {
                views
                    .get(&mailbox)
                    .filter(|c| {
                        let (u, m, g) = c.stamp;
                        g == stamp.2 && u <= uid_next && m <= highest_modseq
                    })
                    .map(|c| (c.stamp.1, c.view.clone()))
            })
        })?;
        let view = Arc::new(match earlier {
            Some((since, old)) => {
                let (changed, gone) = self
                    .store()
                    .flags_changed_since(session.user_id(), mailbox, since)
                    .await?;
                let changed_uids: Vec<Uid> = changed.iter().map(|r| r.uid).collect();
                let fresh = self.flags_entries(session, mailbox, changed).await?;
                apply_changes(&old, &changed_uids, &gone, fresh)
            }
            None => self.read_flags_view(session, mailbox).await?,
        });
        session.with(|k| {
            k.with_cache(|views: &mut ViewCache| {
                let held: usize = views.values().map(|c| c.view.len()).sum();
                if held + view.len() > FLAGS_CACHE_MAX {
                    views.clear();
                }
                views.insert(
                    mailbox,
                    CachedView {
                        stamp,
                        view: view.clone(),
                        summary: None,
                    },
                );
            })
        })?;
        Ok(view)
    }

    /// [`Mail::flags_view_at`] with its [`ViewSummary`]: what SELECT and EXAMINE need. The
    /// summary is kept with the cached view it describes (the same `Arc`), so it is
    /// computed once per state of the mailbox and goes when the view does.
    pub async fn select_view(
        &self,
        session: &Unlocked,
        mailbox: MailboxId,
        uid_next: u32,
        highest_modseq: u64,
    ) -> Result<(Arc<Vec<FlagsEntry>>, Arc<ViewSummary>)> {
        let view = self
            .flags_view_at(session, mailbox, uid_next, highest_modseq)
            .await?;
        let hit = session.with(|k| {
            k.with_cache(|views: &mut ViewCache| {
                views
                    .get(&mailbox)
                    .filter(|c| Arc::ptr_eq(&c.view, &view))
                    .and_then(|c| c.summary.clone())
            })
        })?;
        if let Some(summary) = hit {
            return Ok((view, summary));
        }
        let summary = Arc::new(ViewSummary::of(&view));
        session.with(|k| {
            k.with_cache(|views: &mut ViewCache| {
                if let Some(c) = views
                    .get_mut(&mailbox)
                    .filter(|c| Arc::ptr_eq(&c.view, &view))
                {
                    c.summary = Some(summary.clone());
                }
            })
        })?;
        Ok((view, summary))
    }

    /// [`Mail::flags_view`] read from the store, decrypting what the flags cache lacks.
    async fn read_flags_view(
        &self,
        session: &Unlocked,
        mailbox: MailboxId,
    ) -> Result<Vec<FlagsEntry>> {
        let rows = self.store().list_flags(session.user_id(), mailbox).await?;
        self.flags_entries(session, mailbox, rows).await
    }

    /// The flags of `rows` (in UID order), decrypting what the flags cache lacks; rows
    /// of generations the keyring cannot open are left out.
    async fn flags_entries(
        &self,
        session: &Unlocked,
        mailbox: MailboxId,
        rows: Vec<coffer_store::FlagRow>,
    ) -> Result<Vec<FlagsEntry>> {
        // Flags decrypted earlier for the same message at the same MODSEQ are taken from
        // the keyring's cache (wiped with the keys); only the rest is decrypted.
        let (known, missing): (Vec<(Uid, Option<FlagsEntry>)>, Vec<coffer_store::FlagRow>) =
            session.with(|k| {
                k.with_cache(|cache: &mut FlagsCache| {
                    let mut missing = Vec::new();
                    let known = rows
                        .into_iter()
                        .map(|row| match cache.get(&(mailbox, row.msg_id)) {
                            Some((modseq, flags)) if *modseq == row.modseq => (
                                row.uid,
                                Some(FlagsEntry {
                                    uid: row.uid,
                                    modseq: row.modseq,
                                    flags: flags.clone(),
                                }),
                            ),
                            _ => {
                                let uid = row.uid;
                                missing.push(row);
                                (uid, None)
                            }
                        })
                        .collect();
                    (known, missing)
                })
            })?;
        let ids: Vec<(MsgId, Uid)> = missing.iter().map(|r| (r.msg_id, r.uid)).collect();
        let fresh = if missing.len() < PARALLEL_FLAGS_MIN {
            session.with(|k| decrypt_flags(k, &missing))??
        } else {
            // Many: decrypt on blocking threads, split over the cores, so opening 100,000
            // messages neither stalls the async workers nor uses one core only.
            let worker = session.another_session()?;
            tokio::task::spawn_blocking(move || {
                worker.with(|k| {
                    let threads = std::thread::available_parallelism()
                        .map(|n| n.get())
                        .unwrap_or(1)
                        .clamp(1, 8);
                    let chunk = missing.len().div_ceil(threads);
                    std::thread::scope(|scope| {
                        let handles: Vec<_> = missing
                            .chunks(chunk)
                            .map(|c| scope.spawn(|| decrypt_flags(k, c)))
                            .collect();
                        let mut out = Vec::with_capacity(missing.len());
                        for h in handles {
                            out.extend(h.join().map_err(|_| {
                                MailError::Tampered("flags decryption failed".into())
                            })??);
                        }
                        Ok::<_, MailError>(out)
                    })
                })?
            })
            .await
            .map_err(|e| {
                MailError::Store(coffer_store::StoreError::Unavailable(format!(
                    "decryption task failed: {e}"
                )))
            })??
        };
        session.with(|k| {
            k.with_cache(|cache: &mut FlagsCache| {
                if cache.len() > FLAGS_CACHE_MAX {
                    cache.clear();
                }
                let by_uid: std::collections::HashMap<Uid, MsgId> =
                    ids.iter().map(|(m, u)| (*u, *m)).collect();
                for e in &fresh {
                    if let Some(id) = by_uid.get(&e.uid) {
                        cache.insert((mailbox, *id), (e.modseq, e.flags.clone()));
                    }
                }
            })
        })?;
        // Back in UID order; rows of generations the keyring cannot open stay out.
        let mut fresh: std::collections::HashMap<Uid, FlagsEntry> =
            fresh.into_iter().map(|e| (e.uid, e)).collect();
        Ok(known
            .into_iter()
            .filter_map(|(uid, entry)| entry.or_else(|| fresh.remove(&uid)))
            .collect())
    }

    pub fn with_max_message_bytes(mut self, max: u64) -> Self {
        self.max_message_bytes = max;
        self
    }

    pub fn vault(&self) -> &Arc<Vault> {
        &self.vault
    }

    pub fn max_message_bytes(&self) -> u64 {
        self.max_message_bytes
    }

    fn store(&self) -> &Arc<dyn coffer_store::Store> {
        self.vault.store()
    }

    /// Creates a user with the default mailboxes.
    pub async fn create_user(
        &self,
        name: &str,
        password: &str,
        mode: SecurityMode,
    ) -> Result<Unlocked> {
        Ok(self
            .vault
            .create_user(name, password, mode, default_mailboxes)
            .await?)
    }

    /// Resets a user to a new keyring with fresh default mailboxes (old mail kept sealed).
    pub async fn reset_user(&self, name: &str, new_password: &str) -> Result<Unlocked> {
        Ok(self
            .vault
            .reset(name, new_password, default_mailboxes)
            .await?)
    }

    fn decode_mailbox(&self, session: &Unlocked, row: &MailboxRow) -> Result<Option<Mailbox>> {
        let opened = session.with(|k| {
            if !k.has_generation(row.generation) {
                return Ok(None);
            }
            k.open(row.generation, Place::Mailbox(&row.lookup), &row.sealed)
                .map(Some)
        })?;
        let Some(plain) = opened? else {
            return Ok(None);
        };
        let info = MailboxInfo::decode(&plain)
            .map_err(|_| MailError::Tampered(format!("mailbox {}", row.id)))?;
        // The lookup must be the keyed hash of the sealed name: a swapped row is caught.
        let expected = self
            .vault
            .pepper()
            .mailbox_lookup(&row.user_id, row.generation, &info.name);
        if expected != row.lookup {
            return Err(MailError::Tampered(format!("mailbox {}", row.id)));
        }
        Ok(Some(Mailbox {
            id: row.id,
            name: info.name,
            special_use: info.special_use,
            subscribed: info.subscribed,
            uid_validity: row.uid_validity,
            uid_next: row.uid_next,
            highest_modseq: row.highest_modseq,
            generation: row.generation,
        }))
    }

    /// Every mailbox the open keyring can read, sorted by name. Mailboxes of a generation
    /// that is not open (before a reset, not reopened) are not listed.
    pub async fn list_mailboxes(&self, session: &Unlocked) -> Result<Vec<Mailbox>> {
        let rows = self.store().list_mailboxes(session.user_id()).await?;
        let mut out = Vec::with_capacity(rows.len());
        for row in &rows {
            if let Some(m) = self.decode_mailbox(session, row)? {
                out.push(m);
            }
        }
        out.sort_by(|a, b| a.name.cmp(&b.name));
        Ok(out)
    }

    pub async fn find_mailbox(
        &self,
        session: &Unlocked,
        name: &MailboxName,
    ) -> Result<Option<Mailbox>> {
        let generation = session.with(|k| k.current_generation())?;
        let lookup = self
            .vault
            .pepper()
            .mailbox_lookup(session.user_id(), generation, name);
        match self
            .store()
            .find_mailbox(session.user_id(), &lookup)
            .await?
        {
            Some(row) => self.decode_mailbox(session, &row),
            None => Ok(None),
        }
    }

    pub async fn get_mailbox(&self, session: &Unlocked, id: MailboxId) -> Result<Mailbox> {
        let row = self
            .store()
            .get_mailbox(session.user_id(), id)
            .await?
            .ok_or(MailError::NoSuchMailbox)?;
        self.decode_mailbox(session, &row)?
            .ok_or(MailError::NoSuchMailbox)
    }

    async fn require(&self, session: &Unlocked, name: &MailboxName) -> Result<Mailbox> {
        self.find_mailbox(session, name)
            .await?
            .ok_or(MailError::NoSuchMailbox)
    }

    /// Creates a mailbox and any missing parents (RFC 9051 §6.3.4).
    pub async fn create_mailbox(&self, session: &Unlocked, name: &MailboxName) -> Result<Mailbox> {
        if self.find_mailbox(session, name).await?.is_some() {
            return Err(MailError::MailboxExists);
        }
        self.ensure_parents(session, name).await?;
        self.create_one(session, name.clone()).await
    }

    /// Creates every missing ancestor of `name`, outermost first.
    async fn ensure_parents(&self, session: &Unlocked, name: &MailboxName) -> Result<()> {
        let mut ancestors = Vec::new();
        let mut p = name.parent();
        while let Some(parent) = p {
            p = parent.parent();
            ancestors.push(parent);
        }
        for parent in ancestors.into_iter().rev() {
            if self.find_mailbox(session, &parent).await?.is_none() {
                self.create_one(session, parent).await?;
            }
        }
        Ok(())
    }

    async fn create_one(&self, session: &Unlocked, name: MailboxName) -> Result<Mailbox> {
        let pepper = self.vault.pepper();
        let new = session.with(|k| new_mailbox_row(k, pepper, name, None, true))?;
        let row = match self.store().create_mailbox(session.user_id(), new).await {
            Ok(row) => row,
            Err(coffer_store::StoreError::Conflict(_)) => return Err(MailError::MailboxExists),
            Err(e) => return Err(e.into()),
        };
        self.decode_mailbox(session, &row)?
            .ok_or(MailError::NoSuchMailbox)
    }

    async fn write_info(
        &self,
        session: &Unlocked,
        id: MailboxId,
        info: &MailboxInfo,
    ) -> Result<()> {
        let pepper = self.vault.pepper();
        let (generation, lookup, sealed) = session.with(|k| {
            let g = k.current_generation();
            let lookup = pepper.mailbox_lookup(k.user_id(), g, &info.name);
            let (_, sealed) = k.seal(Place::Mailbox(&lookup), &info.encode());
            (g, lookup, sealed)
        })?;
        match self
            .store()
            .update_mailbox(session.user_id(), id, generation, sealed, lookup)
            .await
        {
            Ok(()) => Ok(()),
            Err(coffer_store::StoreError::Conflict(_)) => Err(MailError::MailboxExists),
            Err(e) => Err(e.into()),
        }
    }

    /// Renames a mailbox and its children (RFC 9051 §6.3.6). Renaming INBOX moves its
    /// messages to a new mailbox and leaves INBOX empty.
    pub async fn rename_mailbox(
        &self,
        session: &Unlocked,
        from: &MailboxName,
        to: &MailboxName,
    ) -> Result<Mailbox> {
        let source = self.require(session, from).await?;
        if self.find_mailbox(session, to).await?.is_some() {
            return Err(MailError::MailboxExists);
        }
        if to.is_under(from) {
            return Err(MailError::NotAllowed(
                "a mailbox cannot be moved under itself",
            ));
        }
        if from.is_inbox() {
            let target = self.create_mailbox(session, to).await?;
            let uids: Vec<Uid> = self
                .store()
                .list_messages(session.user_id(), source.id)
                .await?
                .into_iter()
                .map(|m| m.uid)
                .collect();
            if !uids.is_empty() {
                self.store()
                    .move_messages(session.user_id(), source.id, uids, target.id)
                    .await?;
                self.changed(session, source.id);
                self.changed(session, target.id);
            }
            return self.get_mailbox(session, target.id).await;
        }
        // Parents of the new name first, so the hierarchy stays complete.
        self.ensure_parents(session, to).await?;
        let all = self.list_mailboxes(session).await?;
        for child in all.iter().filter(|m| m.name.is_under(from)) {
            let suffix = &child.name.as_str()[from.as_str().len()..];
            let new_name = MailboxName::new(&format!("{}{}", to.as_str(), suffix))?;
            let info = MailboxInfo {
                name: new_name,
                special_use: child.special_use,
                subscribed: child.subscribed,
            };
            self.write_info(session, child.id, &info).await?;
        }
        let info = MailboxInfo {
            name: to.clone(),
            special_use: source.special_use,
            subscribed: source.subscribed,
        };
        self.write_info(session, source.id, &info).await?;
        self.get_mailbox(session, source.id).await
    }

    /// Deletes a mailbox and its messages. INBOX cannot be deleted; a mailbox with children
    /// is refused (as Dovecot does) so nothing is deleted by surprise.
    pub async fn delete_mailbox(&self, session: &Unlocked, name: &MailboxName) -> Result<()> {
        if name.is_inbox() {
            return Err(MailError::NotAllowed("INBOX cannot be deleted"));
        }
        let mb = self.require(session, name).await?;
        let all = self.list_mailboxes(session).await?;
        if all.iter().any(|m| m.name.is_under(name)) {
            return Err(MailError::HasChildren);
        }
        self.store()
            .delete_mailbox(session.user_id(), mb.id)
            .await?;
        // Sessions that have it selected learn that it is gone.
        self.changed(session, mb.id);
        Ok(())
    }

    /// Sets or clears a mailbox's special-use role (RFC 6154 CREATE-SPECIAL-USE).
    pub async fn set_special_use(
        &self,
        session: &Unlocked,
        name: &MailboxName,
        special_use: Option<SpecialUse>,
    ) -> Result<()> {
        let mb = self.require(session, name).await?;
        let info = MailboxInfo {
            name: mb.name,
            special_use,
            subscribed: mb.subscribed,
        };
        self.write_info(session, mb.id, &info).await
    }

    pub async fn set_subscribed(
        &self,
        session: &Unlocked,
        name: &MailboxName,
        subscribed: bool,
    ) -> Result<()> {
        let mb = self.require(session, name).await?;
        let info = MailboxInfo {
            name: mb.name,
            special_use: mb.special_use,
            subscribed,
        };
        self.write_info(session, mb.id, &info).await
    }

    /// Appends a message sealed under the current keyring: body to the public key, metadata
    /// and flags under the index key. Returns the UID and MODSEQ.
    pub async fn append(
        &self,
        session: &Unlocked,
        mailbox: MailboxId,
        body: &[u8],
        flags: &[Flag],
        date: InternalDate,
    ) -> Result<(Uid, ModSeq)> {
        self.append_owned(session, mailbox, body.to_vec(), flags, date)
            .await
    }

    /// [`Mail::append`] taking the message by value: it is sealed as it streams into the
    /// blob store, so the plaintext is the only full copy in memory (an IMAP APPEND of a
    /// large message is not held twice).
    pub async fn append_owned(
        &self,
        session: &Unlocked,
        mailbox: MailboxId,
        body: Vec<u8>,
        flags: &[Flag],
        date: InternalDate,
    ) -> Result<(Uid, ModSeq)> {
        if body.len() as u64 > self.max_message_bytes {
            return Err(MailError::TooLarge(self.max_message_bytes));
        }
        let msg_id = MsgId(rand::random());
        let blob_id = BlobId(rand::random());
        let (body, summary) = summarize(body).await?;
        let meta = MessageMeta {
            blob_id: blob_id.0,
            size: body.len() as u64,
            internal_date: date.timestamp,
            tz_offset_minutes: date.tz_offset_minutes,
            summary: Some(Arc::new(summary)),
        };
        let (sealer, sealed_meta, sealed_flags) = session.with(|k| {
            let (_, meta) = k.seal(Place::MessageMeta(msg_id.as_bytes()), &meta.encode());
            // Flags are sealed even when empty, so a copy of the store cannot tell unread
            // mail from read mail by a missing column.
            let (_, flags) = k.seal(
                Place::MessageFlags(msg_id.as_bytes()),
                &codec::encode_flags(flags),
            );
            (k.public_sealer(), meta, Some(flags))
        })?;
        let generation = sealer.generation();
        let user = *session.user_id();
        let blob_len = self
            .store()
            .put_blob_streamed(
                &user,
                &blob_id,
                Box::new(move |w| sealer.seal_body_to(&blob_id, &body, w)),
            )
            .await?;
        let (uids, modseq) = self
            .store()
            .append(
                &user,
                mailbox,
                vec![NewMessage {
                    msg_id,
                    blob_id,
                    blob_len,
                    seal: SealRef::IndexKey(generation),
                    sealed_meta,
                    sealed_flags,
                }],
            )
            .await?;
        self.changed(session, mailbox);
        Ok((uids[0], modseq))
    }

    /// Keeps summaries that FETCH computed from the bodies of rows stored without one, so
    /// the next FETCH of those messages opens no body. A cache: no MODSEQ moves, nothing a
    /// client sees changes, and a row resealed or expunged meanwhile is left alone.
    pub async fn remember_summaries(
        &self,
        session: &Unlocked,
        found: Vec<(Message, Summary)>,
    ) -> Result<usize> {
        let mut rows = Vec::with_capacity(found.len());
        for (m, summary) in found {
            let SealRef::IndexKey(g) = m.seal else {
                continue;
            };
            let meta = MessageMeta {
                blob_id: m.blob_id.0,
                size: m.size,
                internal_date: m.internal_date,
                tz_offset_minutes: m.tz_offset_minutes,
                summary: Some(Arc::new(summary)),
            };
            let sealed = session.with(|k| {
                k.seal_in(g, Place::MessageMeta(m.msg_id.as_bytes()), &meta.encode())
            })??;
            rows.push((m.msg_id, m.seal, sealed));
        }
        if rows.is_empty() {
            return Ok(0);
        }
        Ok(self
            .store()
            .replace_sealed_meta(session.user_id(), rows)
            .await?)
    }

    fn decode_message(&self, session: &Unlocked, row: &MessageRow) -> Result<Message> {
        self.decode_columns(session, row, Columns::All)
    }

    fn decode_columns(
        &self,
        session: &Unlocked,
        row: &MessageRow,
        columns: Columns,
    ) -> Result<Message> {
        let msg = row.msg_id;
        let (meta, flags) = session.with(|k| -> Result<_> {
            let meta = match row.seal {
                SealRef::IndexKey(g) => {
                    k.open(g, Place::MessageMeta(msg.as_bytes()), &row.sealed_meta)?
                }
                SealRef::PublicKey(g) => {
                    k.open_delivered(g, Place::MessageMeta(msg.as_bytes()), &row.sealed_meta)?
                }
            };
            let flags = match (&row.sealed_flags, columns) {
                (Some(f), Columns::All) => Some(k.open(
                    row.seal.generation(),
                    Place::MessageFlags(msg.as_bytes()),
                    f,
                )?),
                _ => None,
            };
            Ok((meta, flags))
        })??;
        let meta = MessageMeta::decode(&meta)
            .map_err(|_| MailError::Tampered(format!("metadata of message {msg}")))?;
        if meta.blob_id != row.blob_id.0 {
            return Err(MailError::Tampered(format!(
                "message {msg} points at a blob that is not its own"
            )));
        }
        let flags = match flags {
            Some(f) => codec::decode_flags(&f)
                .map_err(|_| MailError::Tampered(format!("flags of message {msg}")))?,
            None => Vec::new(),
        };
        Ok(Message {
            uid: row.uid,
            modseq: row.modseq,
            msg_id: row.msg_id,
            blob_id: row.blob_id,
            seal: row.seal,
            size: meta.size,
            internal_date: meta.internal_date,
            tz_offset_minutes: meta.tz_offset_minutes,
            flags,
            summary: meta.summary,
        })
    }

    /// Every message of a mailbox in UID order. Rows that delivery sealed to the public key
    /// are re-sealed under the index key while the keyring is open.
    pub async fn messages(&self, session: &Unlocked, mailbox: MailboxId) -> Result<Vec<Message>> {
        self.messages_with(session, mailbox, Columns::All).await
    }

    /// [`Mail::messages`], opening only the given columns.
    pub async fn messages_with(
        &self,
        session: &Unlocked,
        mailbox: MailboxId,
        columns: Columns,
    ) -> Result<Vec<Message>> {
        let rows = self
            .store()
            .list_messages(session.user_id(), mailbox)
            .await?;
        self.open_rows(session, &rows, columns).await
    }

    /// The messages with the given UIDs (absent ones skipped), in UID order, opening the
    /// given columns; delivered rows are re-sealed as in [`Mail::messages`].
    pub async fn messages_for(
        &self,
        session: &Unlocked,
        mailbox: MailboxId,
        uids: &[Uid],
        columns: Columns,
    ) -> Result<Vec<Message>> {
        let rows = self
            .store()
            .get_messages(session.user_id(), mailbox, uids.to_vec())
            .await?;
        self.open_rows(session, &rows, columns).await
    }

    /// Opens message rows the keyring can read (skipping generations it cannot), re-sealing
    /// rows that delivery sealed to the public key.
    async fn open_rows(
        &self,
        session: &Unlocked,
        rows: &[MessageRow],
        columns: Columns,
    ) -> Result<Vec<Message>> {
        let mut out = Vec::with_capacity(rows.len());
        let mut delivered = Vec::new();
        for row in rows {
            if !session.with(|k| k.has_generation(row.seal.generation()))? {
                continue;
            }
            if let SealRef::PublicKey(g) = row.seal {
                delivered.push((out.len(), g));
            }
            out.push(self.decode_columns(session, row, columns)?);
        }
        // Re-seals are sent together, so the store's group commit writes a batch of them
        // with one fsync instead of one commit each (the first read of new mail).
        for batch in delivered.chunks(RESEAL_BATCH) {
            futures_util::future::try_join_all(
                batch
                    .iter()
                    .map(|(i, g)| self.reseal_delivered(session, &out[*i], *g)),
            )
            .await?;
        }
        for (i, g) in delivered {
            out[i].seal = SealRef::IndexKey(g);
        }
        Ok(out)
    }

    async fn reseal_delivered(&self, session: &Unlocked, m: &Message, g: Generation) -> Result<()> {
        let meta = MessageMeta {
            blob_id: m.blob_id.0,
            size: m.size,
            internal_date: m.internal_date,
            tz_offset_minutes: m.tz_offset_minutes,
            summary: m.summary.clone(),
        };
        let (sealed, empty_flags) = session.with(|k| -> Result<_> {
            let meta = k.seal_in(g, Place::MessageMeta(m.msg_id.as_bytes()), &meta.encode())?;
            let flags = k.seal_in(
                g,
                Place::MessageFlags(m.msg_id.as_bytes()),
                &codec::encode_flags(&[]),
            )?;
            Ok((meta, flags))
        })??;
        // Changes only a row still sealed by delivery, and never overwrites flags that
        // another session stored meanwhile.
        self.store()
            .reseal_message(
                session.user_id(),
                &m.msg_id,
                SealRef::IndexKey(g),
                sealed,
                empty_flags,
            )
            .await?;
        Ok(())
    }

    pub async fn message(
        &self,
        session: &Unlocked,
        mailbox: MailboxId,
        uid: Uid,
    ) -> Result<Option<Message>> {
        match self
            .store()
            .get_message(session.user_id(), mailbox, uid)
            .await?
        {
            Some(row) => Ok(Some(self.decode_message(session, &row)?)),
            None => Ok(None),
        }
    }

    /// The decrypted message (exact bytes as appended or delivered).
    pub async fn body(&self, session: &Unlocked, m: &Message) -> Result<Zeroizing<Vec<u8>>> {
        let sealed = self.store().get_blob(session.user_id(), &m.blob_id).await?;
        let plain = session.with(|k| k.open_body(m.seal.generation(), &m.blob_id, &sealed))??;
        if plain.len() as u64 != m.size {
            return Err(MailError::Tampered(format!("message blob {}", m.blob_id)));
        }
        Ok(plain)
    }

    /// The decrypted body as a stream of chunks, for sending a large `BODY[]` without
    /// holding it whole: a blocking thread reads and decrypts the blob chunk by chunk while
    /// the caller sends the previous one. Every chunk was authenticated before it arrives;
    /// an `Err` in the stream (a tampered, truncated or foreign blob) means what was sent
    /// so far must be abandoned. The chunks add up to exactly `m.size` bytes.
    pub async fn body_chunks(&self, session: &Unlocked, m: &Message) -> Result<BodyChunks> {
        let reader = self
            .store()
            .open_blob(session.user_id(), &m.blob_id)
            .await?;
        let worker = session.another_session()?;
        let (generation, blob, size) = (m.seal.generation(), m.blob_id, m.size);
        let (tx, rx) = tokio::sync::mpsc::channel(BODY_CHUNKS_AHEAD);
        let (give_back, returned) = std::sync::mpsc::channel::<Zeroizing<Vec<u8>>>();
        tokio::task::spawn_blocking(move || {
            let tampered = || MailError::Tampered(format!("message blob {blob}"));
            let opened = worker.with(|k| k.open_body_reader(generation, &blob, reader));
            // The payload key lives in the reader now; the keyring is not held meanwhile.
            drop(worker);
            let mut body = match opened {
                Ok(Ok(r)) if r.len() == size => r,
                Ok(Ok(_)) => return drop(tx.blocking_send(Err(tampered()))),
                Ok(Err(e)) => return drop(tx.blocking_send(Err(e.into()))),
                Err(e) => return drop(tx.blocking_send(Err(e.into()))),
            };
            loop {
                // A buffer the caller has sent is overwritten rather than wiped and freed:
                // wiping 10 MiB byte by byte took a tenth of a large FETCH.
                let mut chunk = returned
                    .try_recv()
                    .unwrap_or_else(|_| Zeroizing::new(Vec::with_capacity(BODY_CHUNK)));
                chunk.resize(BODY_CHUNK, 0);
                let mut filled = 0;
                while filled < chunk.len() {
                    match std::io::Read::read(&mut body, &mut chunk[filled..]) {
                        Ok(0) => break,
                        Ok(n) => filled += n,
                        Err(_) => return drop(tx.blocking_send(Err(tampered()))),
                    }
                }
                if filled == 0 {
                    return;
                }
                chunk.truncate(filled);
                if tx.blocking_send(Ok(chunk)).is_err() {
                    return; // the receiver went away (client gone)
                }
            }
        });
        Ok(BodyChunks {
            chunks: rx,
            give_back,
        })
    }

    /// Changes flags of messages (STORE). Returns the changed UIDs and their new MODSEQ,
    /// and those skipped by UNCHANGEDSINCE (RFC 7162 §3.1.3).
    pub async fn store_flags(
        &self,
        session: &Unlocked,
        mailbox: MailboxId,
        uids: &[Uid],
        op: FlagOp,
        flags: &[Flag],
        unchanged_since: Option<u64>,
    ) -> Result<FlagUpdate> {
        let mut changes = Vec::with_capacity(uids.len());
        for uid in uids {
            let Some(row) = self
                .store()
                .get_message(session.user_id(), mailbox, *uid)
                .await?
            else {
                continue;
            };
            let current = self.decode_message(session, &row)?;
            let mut next: Vec<Flag> = match op {
                FlagOp::Replace => flags.to_vec(),
                FlagOp::Add => current.flags.iter().chain(flags).cloned().collect(),
                FlagOp::Remove => current
                    .flags
                    .iter()
                    .filter(|f| !flags.contains(f))
                    .cloned()
                    .collect(),
            };
            next.sort();
            next.dedup();
            let mut before = current.flags.clone();
            before.sort();
            if next == before && unchanged_since.is_none() {
                continue;
            }
            let g = row.seal.generation();
            let sealed = session.with(|k| {
                k.seal_in(
                    g,
                    Place::MessageFlags(row.msg_id.as_bytes()),
                    &codec::encode_flags(&next),
                )
            })??;
            if let SealRef::PublicKey(_) = row.seal {
                self.reseal_delivered(session, &current, g).await?;
            }
            changes.push((*uid, sealed));
        }
        if changes.is_empty() {
            return Ok(FlagUpdate::default());
        }
        let update = self
            .store()
            .set_flags(session.user_id(), mailbox, changes, unchanged_since)
            .await?;
        if !update.changed.is_empty() {
            self.changed(session, mailbox);
        }
        Ok(update)
    }

    /// Removes the given messages. Returns the UIDs removed and the new MODSEQ.
    pub async fn expunge(
        &self,
        session: &Unlocked,
        mailbox: MailboxId,
        uids: Vec<Uid>,
    ) -> Result<(Vec<Uid>, Option<ModSeq>)> {
        let result = self
            .store()
            .expunge(session.user_id(), mailbox, uids)
            .await?;
        if !result.0.is_empty() {
            self.changed(session, mailbox);
        }
        Ok(result)
    }

    /// Removes every message flagged \Deleted (EXPUNGE, CLOSE).
    pub async fn expunge_deleted(
        &self,
        session: &Unlocked,
        mailbox: MailboxId,
    ) -> Result<(Vec<Uid>, Option<ModSeq>)> {
        let deleted: Vec<Uid> = self
            .messages(session, mailbox)
            .await?
            .into_iter()
            .filter(|m| m.flags.contains(&Flag::Deleted))
            .map(|m| m.uid)
            .collect();
        if deleted.is_empty() {
            return Ok((Vec::new(), None));
        }
        self.expunge(session, mailbox, deleted).await
    }

    /// Copies messages, sharing their sealed blobs. Returns (source, new) UID pairs.
    pub async fn copy(
        &self,
        session: &Unlocked,
        from: MailboxId,
        uids: &[Uid],
        to: MailboxId,
    ) -> Result<Vec<(Uid, Uid)>> {
        let mut news = Vec::new();
        let mut sources = Vec::new();
        for uid in uids {
            let Some(row) = self
                .store()
                .get_message(session.user_id(), from, *uid)
                .await?
            else {
                continue;
            };
            let m = self.decode_message(session, &row)?;
            let g = row.seal.generation();
            let new_id = MsgId(rand::random());
            let meta = MessageMeta {
                blob_id: row.blob_id.0,
                size: m.size,
                internal_date: m.internal_date,
                tz_offset_minutes: m.tz_offset_minutes,
                summary: m.summary.clone(),
            };
            let (sealed_meta, sealed_flags) = session.with(|k| -> Result<_> {
                let meta = k.seal_in(g, Place::MessageMeta(new_id.as_bytes()), &meta.encode())?;
                let flags = k.seal_in(
                    g,
                    Place::MessageFlags(new_id.as_bytes()),
                    &codec::encode_flags(&m.flags),
                )?;
                Ok((meta, Some(flags)))
            })??;
            news.push(NewMessage {
                msg_id: new_id,
                blob_id: row.blob_id,
                blob_len: row.blob_len,
                seal: SealRef::IndexKey(g),
                sealed_meta,
                sealed_flags,
            });
            sources.push(*uid);
        }
        if news.is_empty() {
            return Ok(Vec::new());
        }
        let (new_uids, _) = self.store().append(session.user_id(), to, news).await?;
        self.changed(session, to);
        Ok(sources.into_iter().zip(new_uids).collect())
    }

    /// Moves messages (RFC 6851): same sealed data, new UIDs in `to`, expunged from `from`.
    pub async fn move_messages(
        &self,
        session: &Unlocked,
        from: MailboxId,
        uids: &[Uid],
        to: MailboxId,
    ) -> Result<Vec<(Uid, Uid)>> {
        let pairs = self
            .store()
            .move_messages(session.user_id(), from, uids.to_vec(), to)
            .await?;
        if !pairs.is_empty() {
            self.changed(session, from);
            self.changed(session, to);
        }
        Ok(pairs)
    }

    /// Reopens mail from before a reset with an old secret: the old keyring is linked to
    /// the current one and its mailboxes reappear under `Recovered/`.
    pub async fn reopen_old_mail(
        &self,
        session: &Unlocked,
        old_secret: &str,
    ) -> Result<Vec<MailboxName>> {
        self.vault.reopen(session, old_secret).await?;
        let current = session.with(|k| k.current_generation())?;
        let rows = self.store().list_mailboxes(session.user_id()).await?;
        let mut moved = Vec::new();
        for row in rows.iter().filter(|r| r.generation < current) {
            let Some(mb) = self.decode_mailbox(session, row)? else {
                continue;
            };
            let mut n = 1;
            let base = format!("Recovered/{}", mb.name.as_str());
            let mut name = MailboxName::new(&base)?;
            while self.find_mailbox(session, &name).await?.is_some() {
                n += 1;
                name = MailboxName::new(&format!("{base} ({n})"))?;
            }
            self.ensure_parents(session, &name).await?;
            let info = MailboxInfo {
                name: name.clone(),
                special_use: None,
                subscribed: true,
            };
            self.write_info(session, mb.id, &info).await?;
            moved.push(name);
        }
        Ok(moved)
    }

    /// Opens every message of the user and checks it against its metadata. Returns the
    /// number of messages checked and the problems found (by opaque id only).
    pub async fn check_user(&self, session: &Unlocked) -> Result<(usize, Vec<String>)> {
        let mut problems = Vec::new();
        let mut checked = 0;
        for mb in self.list_mailboxes(session).await? {
            let rows = self.store().list_messages(session.user_id(), mb.id).await?;
            for row in rows {
                checked += 1;
                let m = match self.decode_message(session, &row) {
                    Ok(m) => m,
                    Err(e) => {
                        problems.push(format!("mailbox {} uid {}: {e}", mb.id, row.uid));
                        continue;
                    }
                };
                if let Err(e) = self.body(session, &m).await {
                    problems.push(format!("mailbox {} uid {}: {e}", mb.id, row.uid));
                }
            }
        }
        Ok((checked, problems))
    }

    /// Storage used by a user: sum of exact message sizes and message count.
    pub async fn usage(&self, session: &Unlocked) -> Result<(u64, usize)> {
        let mut bytes = 0;
        let mut count = 0;
        for mb in self.list_mailboxes(session).await? {
            for m in self.messages(session, mb.id).await? {
                bytes += m.size;
                count += 1;
            }
        }
        Ok((bytes, count))
    }
}

/// The user id owning a session (re-exported for callers that only hold a session).
pub fn owner(session: &Unlocked) -> UserId {
    *session.user_id()
}
