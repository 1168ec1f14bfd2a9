//! The embedded backend: SQLite in WAL mode for rows and small sealed blobs, one file per
//! larger sealed blob.
//!
//! Layout of the data directory (docs/FORMAT.md describes every byte):
//!
//! ```text
//! coffer-data/
//!   coffer.db, coffer.db-wal, coffer.db-shm   rows and blobs up to INLINE_BLOB_MAX
//!                                              (SQLite, WAL, synchronous=FULL)
//!   blobs/tmp/                                 blobs being written (ciphertext only)
//!   blobs/<2 hex>/<32 hex>                     larger sealed blobs, named by random id
//! ```
//!
//! Durability (the promise of [`crate::Store`]): a small blob is committed to the `blobs`
//! table, a larger one written to `blobs/tmp`, fsync'd, renamed into place and its
//! directory fsync'd, before the row that references it is committed; commits are durable
//! because WAL mode with `synchronous=FULL` syncs the WAL on every commit
//! (<https://www.sqlite.org/pragma.html#pragma_synchronous>). A crash between blob and row
//! leaves an unreferenced blob, removed by [`Store::sweep_orphans`].
//!
//! Several processes may use one data directory at once (the CLI beside `coffer serve`):
//! SQLite serialises writers, and every write transaction starts `IMMEDIATE`.

use crate::{
    AccountRow, FlagRow, FlagUpdate, KdfParams, KeyringLinkRow, KeyringRow, MailboxRow, MessageRow,
    NewAccount, NewMailbox, NewMessage, Result, SealRef, SlotRow, Store, StoreError,
};
use async_trait::async_trait;
use coffer_types::{
    BlobId, Generation, MailboxId, ModSeq, MsgId, SecurityMode, SlotId, SlotKind, Uid, UidValidity,
    UserId,
};
use rusqlite::config::DbConfig;
use rusqlite::{Connection, OptionalExtension, Row, TransactionBehavior, params};
use std::collections::HashSet;
use std::fs;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

/// Schema version written to `PRAGMA user_version`; see docs/FORMAT.md for migrations.
pub const SCHEMA_VERSION: u32 = 2;

/// Blobs up to this many bytes are stored inside the database (table `blobs`, schema 2);
/// larger ones are files under `blobs/`. SQLite's own measurements ("Internal Versus
/// External BLOBs", sqlite.org/intern-v-extern-blob.html) find reads from the database
/// faster than from separate files for blobs under about 100 KB; for Coffer the larger
/// gain is on the write side: a small APPEND or delivery then writes no file (no inode
/// allocation, rename and directory fsync) and its blob shares the group commit
/// ([`writer_loop`]) like any other write. A sealed 10 KiB message is about 10.5 KB.
pub const INLINE_BLOB_MAX: usize = 96 * 1024;

const SCHEMA_V1: &str = r#"
CREATE TABLE meta (
    key   TEXT PRIMARY KEY,
    value BLOB NOT NULL
) WITHOUT ROWID;
CREATE TABLE accounts (
    user_id     BLOB PRIMARY KEY,
    sealed_name BLOB NOT NULL,
    generation  INTEGER NOT NULL,
    mode        INTEGER NOT NULL,
    kdf_salt    BLOB NOT NULL,
    inbox       INTEGER,
    created     INTEGER NOT NULL
) WITHOUT ROWID;
CREATE TABLE keyrings (
    user_id    BLOB NOT NULL,
    generation INTEGER NOT NULL,
    public_key BLOB NOT NULL,
    created    INTEGER NOT NULL,
    PRIMARY KEY (user_id, generation)
) WITHOUT ROWID;
CREATE TABLE keyring_links (
    user_id      BLOB NOT NULL,
    generation   INTEGER NOT NULL,
    sealed_under INTEGER NOT NULL,
    wrapped      BLOB NOT NULL,
    PRIMARY KEY (user_id, generation)
) WITHOUT ROWID;
CREATE TABLE slots (
    user_id      BLOB NOT NULL,
    slot_id      BLOB NOT NULL,
    kind         INTEGER NOT NULL,
    generation   INTEGER NOT NULL,
    locator      BLOB,
    kdf_m        INTEGER,
    kdf_t        INTEGER,
    kdf_p        INTEGER,
    wrapped      BLOB NOT NULL,
    sealed_label BLOB,
    created      INTEGER NOT NULL,
    last_used    INTEGER,
    PRIMARY KEY (user_id, slot_id)
) WITHOUT ROWID;
CREATE UNIQUE INDEX slots_by_locator ON slots (user_id, locator) WHERE locator IS NOT NULL;
CREATE TABLE mailboxes (
    id             INTEGER PRIMARY KEY AUTOINCREMENT,
    user_id        BLOB NOT NULL,
    generation     INTEGER NOT NULL,
    sealed         BLOB NOT NULL,
    lookup         BLOB NOT NULL,
    uidvalidity    INTEGER NOT NULL,
    uidnext        INTEGER NOT NULL,
    highest_modseq INTEGER NOT NULL,
    created        INTEGER NOT NULL,
    UNIQUE (user_id, lookup)
);
CREATE TABLE messages (
    mailbox_id   INTEGER NOT NULL,
    uid          INTEGER NOT NULL,
    user_id      BLOB NOT NULL,
    modseq       INTEGER NOT NULL,
    msg_id       BLOB NOT NULL UNIQUE,
    blob_id      BLOB NOT NULL,
    blob_len     INTEGER NOT NULL,
    seal_kind    INTEGER NOT NULL,
    seal_gen     INTEGER NOT NULL,
    sealed_meta  BLOB NOT NULL,
    sealed_flags BLOB,
    PRIMARY KEY (mailbox_id, uid)
) WITHOUT ROWID;
CREATE INDEX messages_by_blob ON messages (blob_id);
CREATE INDEX messages_by_user ON messages (user_id);
CREATE TABLE expunged (
    mailbox_id INTEGER NOT NULL,
    uid        INTEGER NOT NULL,
    modseq     INTEGER NOT NULL,
    PRIMARY KEY (mailbox_id, uid)
) WITHOUT ROWID;
"#;

/// Space kept free on the data directory's filesystem: a new blob that would leave less
/// is refused as disk full. Without it the disk could fill to the last byte with mail,
/// and then the very writes that free space (EXPUNGE, a deleted mailbox) could not commit,
/// since SQLite needs room in its WAL for them (with `secure_delete` an expunge also
/// writes the zeroed pages of what it deletes). Postfix keeps a reserve the same way
/// (`queue_minfree`). The reserve is 8 MiB for the WAL (SQLite checkpoints it into the
/// database file at 1,000 pages, about 4 MiB, so the file grows by up to that much after
/// the space was checked; <https://www.sqlite.org/wal.html#automatic_checkpoint>) plus a
/// sixteenth of the filesystem, at most 120 MiB, for expunges.
pub const fn free_space_reserve(filesystem_bytes: u64) -> u64 {
    let sixteenth = filesystem_bytes / 16;
    let share = if sixteenth < 120 << 20 {
        sixteenth
    } else {
        120 << 20
    };
    (8 << 20) + share
}

/// Refuses a new blob of `need` bytes when it would leave less than the reserve free.
/// `reusable` is room the blob can use besides the filesystem's free space (free pages
/// inside the database, for a blob stored there).
fn check_free_space(dir: &Path, need: u64, reusable: u64) -> Result<()> {
    let st = rustix::fs::statvfs(dir)
        .map_err(|e| StoreError::io("reading the free space of the data directory", e.into()))?;
    let block = st.f_frsize.max(1);
    let avail = st.f_bavail.saturating_mul(block).saturating_add(reusable);
    let reserve = free_space_reserve(st.f_blocks.saturating_mul(block));
    if avail < reserve.saturating_add(need) {
        return Err(StoreError::DiskFull(format!(
            "storing a message: {} KiB free, {} KiB are kept free for expunges and flag changes",
            avail / 1024,
            reserve / 1024
        )));
    }
    Ok(())
}

/// Schema 2: small sealed blobs inside the database (see [`INLINE_BLOB_MAX`]; blobs
/// written before stay files, a reader looks here first, then in `blobs/`), and indexes of
/// messages and expunge records by MODSEQ, so what changed since a MODSEQ is found
/// without reading the whole mailbox ([`Store::flags_changed_since`], QRESYNC).
const SCHEMA_V2: &str = r#"
CREATE TABLE blobs (
    blob_id BLOB NOT NULL UNIQUE,
    created INTEGER NOT NULL,
    data    BLOB NOT NULL
);
CREATE INDEX messages_by_modseq ON messages (mailbox_id, modseq);
CREATE INDEX expunged_by_modseq ON expunged (mailbox_id, modseq);
"#;

/// Name of the SQLite file inside the data directory.
pub const DB_FILE: &str = "coffer.db";

struct Inner {
    dir: PathBuf,
    /// Jobs for the writer thread, which owns the one writing connection (see
    /// [`writer_loop`]). Dropping the last clone of the store ends the thread.
    writer: std::sync::mpsc::Sender<WriteJob>,
    readers: Mutex<Vec<Connection>>,
}

/// A write to run on the writer connection; it returns whether it succeeded itself and what
/// to answer once the commit it was part of has ended (`Ok` when that commit is durable).
type WriteJob = Box<dyn FnOnce(&mut Connection) -> (bool, WriteReply) + Send>;
type WriteReply = Box<dyn FnOnce(Result<()>) + Send>;

/// At most this many writes share one commit.
const GROUP_MAX: usize = 64;

/// The writer thread: group commit. It takes every write that is waiting (up to
/// [`GROUP_MAX`]), runs each in its own savepoint inside one `BEGIN IMMEDIATE`
/// transaction, commits once (one WAL fsync with `synchronous=FULL`) and only then answers
/// them all. A write that fails rolls back its own savepoint only. Writes that arrive while
/// a commit is syncing form the next group, so a lone write waits for nothing, and many
/// sessions writing at once share fsyncs instead of queueing one fsync each.
fn writer_loop(mut conn: Connection, jobs: std::sync::mpsc::Receiver<WriteJob>) {
    while let Ok(first) = jobs.recv() {
        let mut group = vec![first];
        while group.len() < GROUP_MAX {
            match jobs.try_recv() {
                Ok(j) => group.push(j),
                Err(_) => break,
            }
        }
        run_group(&mut conn, group);
    }
}

fn run_group(conn: &mut Connection, group: Vec<WriteJob>) {
    let mut open = conn.execute_batch("BEGIN IMMEDIATE").is_ok();
    let mut waiting: Vec<WriteReply> = Vec::with_capacity(group.len());
    for job in group {
        let ran = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| job(conn)));
        let Ok((succeeded, reply)) = ran else {
            // The job's sender is gone with it: its caller hears "storage task failed".
            continue;
        };
        if open && conn.is_autocommit() {
            // SQLite rolled the whole transaction back (disk full, I/O error): nothing of
            // this group so far was written. Say so to each, then go on in a new one.
            for r in waiting.drain(..) {
                r(Err(StoreError::Unavailable(
                    "another write of the same commit failed; nothing was written".into(),
                )));
            }
            // The write that hit the failure answers with its own error (disk full, ...).
            reply(if succeeded {
                Err(StoreError::Unavailable(
                    "the commit was rolled back; nothing was written".into(),
                ))
            } else {
                Ok(())
            });
            open = conn.execute_batch("BEGIN IMMEDIATE").is_ok();
            continue;
        }
        if open {
            waiting.push(reply);
        } else {
            // Outside a transaction the job's own savepoint was its commit.
            reply(Ok(()));
        }
    }
    if !open {
        return;
    }
    match conn.execute_batch("COMMIT") {
        Ok(()) => waiting.into_iter().for_each(|r| r(Ok(()))),
        Err(e) => {
            let _ = conn.execute_batch("ROLLBACK");
            let e = db_err(e);
            for r in waiting {
                r(Err(same_error(&e)));
            }
        }
    }
}

/// A copy of a commit's error for each write of the group.
fn same_error(e: &StoreError) -> StoreError {
    match e {
        StoreError::DiskFull(s) => StoreError::DiskFull(s.clone()),
        StoreError::Conflict(s) => StoreError::Conflict(s.clone()),
        StoreError::Corrupt { object, reason } => StoreError::Corrupt {
            object: object.clone(),
            reason: reason.clone(),
        },
        other => StoreError::Database(other.to_string()),
    }
}

/// The embedded store. Cheap to clone; all clones share connections.
#[derive(Clone)]
pub struct SqliteStore {
    inner: Arc<Inner>,
}

fn now() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_secs() as i64)
        .unwrap_or(0)
}

fn db_err(e: rusqlite::Error) -> StoreError {
    if let rusqlite::Error::SqliteFailure(code, _) = &e {
        match code.code {
            rusqlite::ErrorCode::DiskFull => {
                return StoreError::DiskFull("writing the database".into());
            }
            rusqlite::ErrorCode::ConstraintViolation => {
                return StoreError::Conflict(format!("constraint: {e}"));
            }
            rusqlite::ErrorCode::DatabaseCorrupt | rusqlite::ErrorCode::NotADatabase => {
                return StoreError::Corrupt {
                    object: DB_FILE.into(),
                    reason: e.to_string(),
                };
            }
            _ => {}
        }
    }
    StoreError::Database(e.to_string())
}

fn open_connection(path: &Path) -> Result<Connection> {
    let conn = Connection::open(path).map_err(db_err)?;
    conn.busy_timeout(Duration::from_secs(30)).map_err(db_err)?;
    conn.pragma_update(None, "journal_mode", "WAL")
        .map_err(db_err)?;
    conn.pragma_update(None, "synchronous", "FULL")
        .map_err(db_err)?;
    conn.pragma_update(None, "foreign_keys", "ON")
        .map_err(db_err)?;
    // Freed pages are zeroed so deleted ciphertext does not linger in the file.
    conn.pragma_update(None, "secure_delete", "ON")
        .map_err(db_err)?;
    // The bundled SQLite is built with SQLITE_ENABLE_STAT4. Without the query planner
    // stability guarantee, a statement whose bound parameter meets an indexed column is
    // marked for re-preparation whenever its bindings are cleared, which the statement
    // cache does after every use: each cached query was parsed and planned again on every
    // run (7 % of the server's time in a FETCH profile). Coffer never runs ANALYZE, so
    // there are no statistics a bound value could improve a plan with.
    // <https://www.sqlite.org/c3ref/c_dbconfig_defensive.html#sqlitedbconfigenableqpsg>
    conn.set_db_config(DbConfig::SQLITE_DBCONFIG_ENABLE_QPSG, true)
        .map_err(db_err)?;
    // Room for every statement the store caches, and for the `IN (...)` lists of a few
    // batch sizes besides (rusqlite's default keeps 16).
    conn.set_prepared_statement_cache_capacity(64);
    Ok(conn)
}

fn fsync_dir(dir: &Path) -> Result<()> {
    let f =
        fs::File::open(dir).map_err(|e| StoreError::io(format!("opening {}", dir.display()), e))?;
    f.sync_all()
        .map_err(|e| StoreError::io(format!("syncing {}", dir.display()), e))
}

fn blob_from(bytes: Vec<u8>, what: &str) -> Result<[u8; 16]> {
    <[u8; 16]>::try_from(bytes.as_slice()).map_err(|_| StoreError::Corrupt {
        object: what.into(),
        reason: "id is not 16 bytes".into(),
    })
}

fn arr32(bytes: Vec<u8>, what: &str) -> Result<[u8; 32]> {
    <[u8; 32]>::try_from(bytes.as_slice()).map_err(|_| StoreError::Corrupt {
        object: what.into(),
        reason: "value is not 32 bytes".into(),
    })
}

fn corrupt(object: &str, reason: &str) -> StoreError {
    StoreError::Corrupt {
        object: object.into(),
        reason: reason.into(),
    }
}

fn account_from_row(r: &Row<'_>) -> rusqlite::Result<RawAccount> {
    Ok((
        r.get(0)?,
        r.get(1)?,
        r.get(2)?,
        r.get(3)?,
        r.get(4)?,
        r.get(5)?,
        r.get(6)?,
    ))
}

type RawAccount = (Vec<u8>, Vec<u8>, i64, i64, Vec<u8>, Option<i64>, i64);

fn account_decode(raw: RawAccount) -> Result<AccountRow> {
    let (uid, sealed_name, generation, mode, salt, inbox, created) = raw;
    let user_id = UserId(arr32(uid, "account")?);
    let object = format!("account {user_id}");
    Ok(AccountRow {
        user_id,
        sealed_name,
        generation: Generation(
            u32::try_from(generation).map_err(|_| corrupt(&object, "generation"))?,
        ),
        mode: u8::try_from(mode)
            .ok()
            .and_then(SecurityMode::from_code)
            .ok_or_else(|| corrupt(&object, "unknown security mode"))?,
        kdf_salt: <[u8; 16]>::try_from(salt.as_slice())
            .map_err(|_| corrupt(&object, "salt length"))?,
        inbox: inbox.map(MailboxId),
        created,
    })
}

const ACCOUNT_COLS: &str = "user_id, sealed_name, generation, mode, kdf_salt, inbox, created";
const SLOT_COLS: &str = "user_id, slot_id, kind, generation, locator, kdf_m, kdf_t, kdf_p, wrapped, sealed_label, created, last_used";
const MAILBOX_COLS: &str =
    "id, user_id, generation, sealed, lookup, uidvalidity, uidnext, highest_modseq, created";
const MESSAGE_COLS: &str = "mailbox_id, uid, modseq, msg_id, blob_id, blob_len, seal_kind, seal_gen, sealed_meta, sealed_flags";

#[allow(clippy::type_complexity)]
struct RawSlot(
    Vec<u8>,
    Vec<u8>,
    i64,
    i64,
    Option<Vec<u8>>,
    Option<i64>,
    Option<i64>,
    Option<i64>,
    Vec<u8>,
    Option<Vec<u8>>,
    i64,
    Option<i64>,
);

fn slot_raw(r: &Row<'_>) -> rusqlite::Result<RawSlot> {
    Ok(RawSlot(
        r.get(0)?,
        r.get(1)?,
        r.get(2)?,
        r.get(3)?,
        r.get(4)?,
        r.get(5)?,
        r.get(6)?,
        r.get(7)?,
        r.get(8)?,
        r.get(9)?,
        r.get(10)?,
        r.get(11)?,
    ))
}

fn slot_decode(raw: RawSlot) -> Result<SlotRow> {
    let RawSlot(user, slot, kind, generation, locator, m, t, p, wrapped, label, created, last_used) =
        raw;
    let slot_id = SlotId(blob_from(slot, "slot")?);
    let object = format!("slot {slot_id}");
    let kdf = match (m, t, p) {
        (Some(m), Some(t), Some(p)) => Some(KdfParams {
            memory_kib: u32::try_from(m).map_err(|_| corrupt(&object, "kdf memory"))?,
            time_cost: u32::try_from(t).map_err(|_| corrupt(&object, "kdf time"))?,
            parallelism: u32::try_from(p).map_err(|_| corrupt(&object, "kdf lanes"))?,
        }),
        (None, None, None) => None,
        _ => return Err(corrupt(&object, "partial kdf parameters")),
    };
    Ok(SlotRow {
        user_id: UserId(arr32(user, &object)?),
        slot_id,
        kind: u8::try_from(kind)
            .ok()
            .and_then(SlotKind::from_code)
            .ok_or_else(|| corrupt(&object, "unknown slot kind"))?,
        generation: Generation(
            u32::try_from(generation).map_err(|_| corrupt(&object, "generation"))?,
        ),
        locator: locator.map(|l| arr32(l, &object)).transpose()?,
        kdf,
        wrapped,
        sealed_label: label,
        created,
        last_used,
    })
}

struct RawMailbox(i64, Vec<u8>, i64, Vec<u8>, Vec<u8>, i64, i64, i64, i64);

fn mailbox_raw(r: &Row<'_>) -> rusqlite::Result<RawMailbox> {
    Ok(RawMailbox(
        r.get(0)?,
        r.get(1)?,
        r.get(2)?,
        r.get(3)?,
        r.get(4)?,
        r.get(5)?,
        r.get(6)?,
        r.get(7)?,
        r.get(8)?,
    ))
}

fn mailbox_decode(raw: RawMailbox) -> Result<MailboxRow> {
    let RawMailbox(id, user, generation, sealed, lookup, uv, next, hms, created) = raw;
    let object = format!("mailbox {id}");
    Ok(MailboxRow {
        id: MailboxId(id),
        user_id: UserId(arr32(user, &object)?),
        generation: Generation(
            u32::try_from(generation).map_err(|_| corrupt(&object, "generation"))?,
        ),
        sealed,
        lookup: arr32(lookup, &object)?,
        uid_validity: u32::try_from(uv)
            .ok()
            .and_then(UidValidity::new)
            .ok_or_else(|| corrupt(&object, "uidvalidity"))?,
        uid_next: u32::try_from(next).map_err(|_| corrupt(&object, "uidnext"))?,
        highest_modseq: u64::try_from(hms).map_err(|_| corrupt(&object, "modseq"))?,
        created,
    })
}

struct RawMessage(
    i64,
    i64,
    i64,
    Vec<u8>,
    Vec<u8>,
    i64,
    i64,
    i64,
    Vec<u8>,
    Option<Vec<u8>>,
);

fn message_raw(r: &Row<'_>) -> rusqlite::Result<RawMessage> {
    Ok(RawMessage(
        r.get(0)?,
        r.get(1)?,
        r.get(2)?,
        r.get(3)?,
        r.get(4)?,
        r.get(5)?,
        r.get(6)?,
        r.get(7)?,
        r.get(8)?,
        r.get(9)?,
    ))
}

fn message_decode(raw: RawMessage) -> Result<MessageRow> {
    let RawMessage(mailbox, uid, modseq, msg_id, blob_id, blob_len, kind, seal_gen, meta, flags) =
        raw;
    let object = format!("message {mailbox}/{uid}");
    let generation =
        Generation(u32::try_from(seal_gen).map_err(|_| corrupt(&object, "generation"))?);
    Ok(MessageRow {
        mailbox: MailboxId(mailbox),
        uid: uid_of(uid, &object)?,
        modseq: modseq_of(modseq, &object)?,
        msg_id: MsgId(blob_from(msg_id, &object)?),
        blob_id: BlobId(blob_from(blob_id, &object)?),
        blob_len: u64::try_from(blob_len).map_err(|_| corrupt(&object, "blob length"))?,
        seal: u8::try_from(kind)
            .ok()
            .and_then(|k| SealRef::from_parts(k, generation))
            .ok_or_else(|| corrupt(&object, "seal kind"))?,
        sealed_meta: meta,
        sealed_flags: flags,
    })
}

fn insert_slot(tx: &Connection, s: &SlotRow) -> Result<()> {
    tx.execute(
        &format!("INSERT INTO slots ({SLOT_COLS}) VALUES (?1,?2,?3,?4,?5,?6,?7,?8,?9,?10,?11,?12)"),
        params![
            s.user_id.as_bytes().as_slice(),
            s.slot_id.as_bytes().as_slice(),
            s.kind.code(),
            s.generation.0,
            s.locator.as_ref().map(|l| l.as_slice()),
            s.kdf.map(|k| k.memory_kib),
            s.kdf.map(|k| k.time_cost),
            s.kdf.map(|k| k.parallelism),
            s.wrapped,
            s.sealed_label,
            s.created,
            s.last_used,
        ],
    )
    .map_err(db_err)?;
    Ok(())
}

/// Allocates a UIDVALIDITY that is larger than every earlier one in this installation, so
/// that a mailbox re-created under an old name never reuses one (RFC 9051 §2.3.1.1).
fn next_uidvalidity(tx: &Connection) -> Result<UidValidity> {
    let last: Option<Vec<u8>> = tx
        .query_row(
            "SELECT value FROM meta WHERE key = 'last_uidvalidity'",
            [],
            |r| r.get(0),
        )
        .optional()
        .map_err(db_err)?;
    let last = last
        .and_then(|v| <[u8; 4]>::try_from(v.as_slice()).ok())
        .map(u32::from_be_bytes)
        .unwrap_or(0);
    let candidate = (now() as u64).min(u32::MAX as u64 - 1) as u32;
    let next = candidate.max(last.saturating_add(1)).max(1);
    tx.execute(
        "INSERT INTO meta (key, value) VALUES ('last_uidvalidity', ?1)
         ON CONFLICT(key) DO UPDATE SET value = excluded.value",
        params![next.to_be_bytes().to_vec()],
    )
    .map_err(db_err)?;
    UidValidity::new(next).ok_or_else(|| StoreError::Database("uidvalidity exhausted".into()))
}

fn insert_mailbox(tx: &Connection, user: &UserId, m: &NewMailbox) -> Result<MailboxRow> {
    let uv = next_uidvalidity(tx)?;
    let created = now();
    tx.execute(
        "INSERT INTO mailboxes (user_id, generation, sealed, lookup, uidvalidity, uidnext, highest_modseq, created)
         VALUES (?1, ?2, ?3, ?4, ?5, 1, 1, ?6)",
        params![user.as_bytes().as_slice(), m.generation.0, m.sealed, m.lookup.as_slice(), uv.get(), created],
    )
    .map_err(|e| match db_err(e) {
        StoreError::Conflict(_) => StoreError::Conflict("a mailbox with that name exists".into()),
        other => other,
    })?;
    let id = MailboxId(tx.last_insert_rowid());
    if m.is_inbox {
        tx.execute(
            "UPDATE accounts SET inbox = ?1 WHERE user_id = ?2",
            params![id.0, user.as_bytes().as_slice()],
        )
        .map_err(db_err)?;
    }
    Ok(MailboxRow {
        user_id: *user,
        id,
        generation: m.generation,
        sealed: m.sealed.clone(),
        lookup: m.lookup,
        uid_validity: uv,
        uid_next: 1,
        highest_modseq: 1,
        created,
    })
}

fn mailbox_counters(tx: &Connection, user: &UserId, mailbox: MailboxId) -> Result<(u32, u64)> {
    let row: Option<(i64, i64)> = tx
        .query_row(
            "SELECT uidnext, highest_modseq FROM mailboxes WHERE id = ?1 AND user_id = ?2",
            params![mailbox.0, user.as_bytes().as_slice()],
            |r| Ok((r.get(0)?, r.get(1)?)),
        )
        .optional()
        .map_err(db_err)?;
    let (next, hms) = row.ok_or_else(|| StoreError::NotFound(format!("mailbox {mailbox}")))?;
    Ok((next as u32, hms as u64))
}

/// Of `candidates`, the blobs no message references any more. Those stored inside the
/// database are deleted here, in the caller's savepoint (atomic with the rows that
/// referenced them); the rest are returned: files for the caller to remove after commit.
fn unreferenced(tx: &Connection, candidates: &[Vec<u8>]) -> Result<Vec<BlobId>> {
    let mut stmt = tx
        .prepare_cached("SELECT 1 FROM messages WHERE blob_id = ?1 LIMIT 1")
        .map_err(db_err)?;
    let mut inline = tx
        .prepare_cached("DELETE FROM blobs WHERE blob_id = ?1")
        .map_err(db_err)?;
    let mut out = Vec::new();
    let mut seen = HashSet::new();
    for c in candidates {
        if !seen.insert(c.clone()) {
            continue;
        }
        let used = stmt.exists(params![c]).map_err(db_err)?;
        if !used && inline.execute(params![c]).map_err(db_err)? == 0 {
            out.push(BlobId(blob_from(c.clone(), "blob")?));
        }
    }
    Ok(out)
}

/// UIDs expunged from `mailbox` (of `user`) with a MODSEQ above `since`, in UID order,
/// found by the MODSEQ index (schema 2) rather than by walking every expunge record.
fn expunged_uids(
    c: &Connection,
    user: &UserId,
    mailbox: MailboxId,
    since: u64,
) -> Result<Vec<Uid>> {
    let since = i64::try_from(since).unwrap_or(i64::MAX);
    let mut stmt = c
        .prepare_cached(
            "SELECT e.uid FROM expunged e INDEXED BY expunged_by_modseq
             JOIN mailboxes m ON m.id = e.mailbox_id
             WHERE e.mailbox_id = ?1 AND m.user_id = ?2 AND e.modseq > ?3 ORDER BY e.uid",
        )
        .map_err(db_err)?;
    let uids: Vec<i64> = stmt
        .query_map(params![mailbox.0, user.as_bytes().as_slice(), since], |r| {
            r.get(0)
        })
        .map_err(db_err)?
        .collect::<rusqlite::Result<_>>()
        .map_err(db_err)?;
    Ok(uids
        .into_iter()
        .filter_map(|u| u32::try_from(u).ok().and_then(Uid::new))
        .collect())
}

fn uid_of(v: i64, object: &str) -> Result<Uid> {
    u32::try_from(v)
        .ok()
        .and_then(Uid::new)
        .ok_or_else(|| corrupt(object, "uid"))
}

fn modseq_of(v: i64, object: &str) -> Result<ModSeq> {
    u64::try_from(v)
        .ok()
        .and_then(ModSeq::new)
        .ok_or_else(|| corrupt(object, "modseq"))
}

/// Rows of `SELECT uid, modseq, msg_id, seal_kind, seal_gen, sealed_flags`.
fn flag_rows(mailbox: MailboxId, mut rows: rusqlite::Rows<'_>) -> Result<Vec<FlagRow>> {
    let mut out = Vec::new();
    while let Some(r) = rows.next().map_err(db_err)? {
        let uid: i64 = r.get(0).map_err(db_err)?;
        let modseq: i64 = r.get(1).map_err(db_err)?;
        let msg_id: Vec<u8> = r.get(2).map_err(db_err)?;
        let kind: i64 = r.get(3).map_err(db_err)?;
        let generation: i64 = r.get(4).map_err(db_err)?;
        let object = format!("message {mailbox}/{uid}");
        out.push(FlagRow {
            uid: uid_of(uid, &object)?,
            modseq: modseq_of(modseq, &object)?,
            msg_id: MsgId(blob_from(msg_id, &object)?),
            seal: u8::try_from(kind)
                .ok()
                .zip(u32::try_from(generation).ok())
                .and_then(|(k, g)| SealRef::from_parts(k, Generation(g)))
                .ok_or_else(|| corrupt(&object, "seal kind"))?,
            sealed_flags: r.get(5).map_err(db_err)?,
        });
    }
    Ok(out)
}

impl SqliteStore {
    /// Opens (creating if needed) the embedded store in `dir`, migrating the schema.
    /// Refuses a database whose schema is newer than this binary knows.
    pub fn open(dir: &Path) -> Result<Self> {
        fs::create_dir_all(dir.join("blobs").join("tmp"))
            .map_err(|e| StoreError::io(format!("creating {}", dir.display()), e))?;
        let path = dir.join(DB_FILE);
        let mut conn = open_connection(&path)?;
        migrate(&mut conn)?;
        let (jobs, queue) = std::sync::mpsc::channel();
        std::thread::Builder::new()
            .name("coffer-sqlite-writer".into())
            .spawn(move || writer_loop(conn, queue))
            .map_err(|e| StoreError::io("starting the database writer", e))?;
        Ok(SqliteStore {
            inner: Arc::new(Inner {
                dir: dir.to_path_buf(),
                writer: jobs,
                readers: Mutex::new(Vec::new()),
            }),
        })
    }

    pub fn dir(&self) -> &Path {
        &self.inner.dir
    }

    fn blob_path(&self, blob: &BlobId) -> PathBuf {
        let hex = blob.to_hex();
        self.inner.dir.join("blobs").join(&hex[..2]).join(&hex)
    }

    /// Runs `f` on the writer connection, in a savepoint of a group commit (see
    /// [`writer_loop`]); returns once the commit that holds it is durable. `f` makes its
    /// changes atomic with `c.savepoint()`, never with a transaction of its own.
    async fn write<T, F>(&self, f: F) -> Result<T>
    where
        T: Send + 'static,
        F: FnOnce(&mut Connection) -> Result<T> + Send + 'static,
    {
        let (tx, rx) = tokio::sync::oneshot::channel();
        let job: WriteJob = Box::new(move |c: &mut Connection| {
            let out = f(c);
            let succeeded = out.is_ok();
            let reply: WriteReply = Box::new(move |commit: Result<()>| {
                // The write's own error first; its success only once the commit is durable.
                let _ = tx.send(out.and_then(|v| commit.map(|()| v)));
            });
            (succeeded, reply)
        });
        self.inner
            .writer
            .send(job)
            .map_err(|_| StoreError::Unavailable("the database writer stopped".into()))?;
        rx.await
            .map_err(|_| StoreError::Unavailable("storage task failed".into()))?
    }

    async fn read<T, F>(&self, f: F) -> Result<T>
    where
        T: Send + 'static,
        F: FnOnce(&Connection) -> Result<T> + Send + 'static,
    {
        let inner = self.inner.clone();
        tokio::task::spawn_blocking(move || {
            let pooled = inner.readers.lock().ok().and_then(|mut p| p.pop());
            let conn = match pooled {
                Some(c) => c,
                None => open_connection(&inner.dir.join(DB_FILE))?,
            };
            let out = f(&conn);
            if let Ok(mut p) = inner.readers.lock()
                && p.len() < 8
            {
                p.push(conn);
            }
            out
        })
        .await
        .map_err(|e| StoreError::Unavailable(format!("storage task failed: {e}")))?
    }

    /// Stores a small blob inside the database, in a group commit; durable on return.
    /// Writing a blob id again replaces its bytes (ids are random and written once; a
    /// retry writes the same bytes).
    async fn put_inline_blob(&self, blob: &BlobId, data: Vec<u8>) -> Result<()> {
        let blob = *blob;
        let dir = self.inner.dir.clone();
        self.write(move |c| {
            // The database's free pages count only when the filesystem alone falls short
            // (two PRAGMA reads saved on every ordinary append).
            if check_free_space(&dir, data.len() as u64, 0).is_err() {
                let free_pages: i64 = c
                    .query_row("PRAGMA freelist_count", [], |r| r.get(0))
                    .map_err(db_err)?;
                let page: i64 = c
                    .query_row("PRAGMA page_size", [], |r| r.get(0))
                    .map_err(db_err)?;
                let reusable = u64::try_from(free_pages.saturating_mul(page)).unwrap_or(0);
                check_free_space(&dir, data.len() as u64, reusable)?;
            }
            c.prepare_cached(
                "INSERT INTO blobs (blob_id, created, data) VALUES (?1, ?2, ?3)
                 ON CONFLICT (blob_id) DO UPDATE SET data = excluded.data, created = excluded.created",
            )
            .map_err(db_err)?
            .execute(params![blob.as_bytes().as_slice(), now(), data])
            .map_err(db_err)?;
            Ok(())
        })
        .await
    }

    fn remove_blobs(&self, blobs: &[BlobId]) {
        for b in blobs {
            // A blob that cannot be removed now is an orphan; sweep_orphans retries later.
            let _ = fs::remove_file(self.blob_path(b));
        }
    }
}

fn migrate(conn: &mut Connection) -> Result<()> {
    let version: u32 = conn
        .query_row("PRAGMA user_version", [], |r| r.get(0))
        .map_err(db_err)?;
    if version > SCHEMA_VERSION {
        return Err(StoreError::SchemaTooNew {
            found: version,
            known: SCHEMA_VERSION,
        });
    }
    if version < SCHEMA_VERSION {
        let tx = conn
            .transaction_with_behavior(TransactionBehavior::Exclusive)
            .map_err(db_err)?;
        // Another process may have migrated while we waited for the lock.
        let again: u32 = tx
            .query_row("PRAGMA user_version", [], |r| r.get(0))
            .map_err(db_err)?;
        if again < 1 {
            tx.execute_batch(SCHEMA_V1).map_err(db_err)?;
        }
        if again < 2 {
            tx.execute_batch(SCHEMA_V2).map_err(db_err)?;
        }
        if again < SCHEMA_VERSION {
            tx.pragma_update(None, "user_version", SCHEMA_VERSION)
                .map_err(db_err)?;
        }
        tx.commit().map_err(db_err)?;
    }
    Ok(())
}

#[async_trait]
impl Store for SqliteStore {
    async fn get_meta(&self, key: &str) -> Result<Option<Vec<u8>>> {
        let key = key.to_string();
        self.read(move |c| {
            c.query_row("SELECT value FROM meta WHERE key = ?1", params![key], |r| {
                r.get(0)
            })
            .optional()
            .map_err(db_err)
        })
        .await
    }

    async fn set_meta(&self, key: &str, value: &[u8]) -> Result<()> {
        let key = key.to_string();
        let value = value.to_vec();
        self.write(move |c| {
            c.execute(
                "INSERT INTO meta (key, value) VALUES (?1, ?2)
                 ON CONFLICT(key) DO UPDATE SET value = excluded.value",
                params![key, value],
            )
            .map_err(db_err)?;
            Ok(())
        })
        .await
    }

    async fn create_account(&self, new: NewAccount) -> Result<Vec<MailboxRow>> {
        self.write(move |c| {
            let tx = c
                .savepoint()
                .map_err(db_err)?;
            let a = &new.account;
            let user = a.user_id.as_bytes().as_slice();
            let inserted = tx
                .execute(
                    &format!("INSERT OR IGNORE INTO accounts ({ACCOUNT_COLS}) VALUES (?1,?2,?3,?4,?5,NULL,?6)"),
                    params![user, a.sealed_name, a.generation.0, a.mode.code(), a.kdf_salt.as_slice(), a.created],
                )
                .map_err(db_err)?;
            if inserted == 0 {
                return Err(StoreError::Conflict("account exists".into()));
            }
            let k = &new.keyring;
            tx.execute(
                "INSERT INTO keyrings (user_id, generation, public_key, created) VALUES (?1,?2,?3,?4)",
                params![user, k.generation.0, k.public_key.as_slice(), k.created],
            )
            .map_err(db_err)?;
            for s in &new.slots {
                insert_slot(&tx, s)?;
            }
            let mut rows = Vec::new();
            for m in &new.mailboxes {
                rows.push(insert_mailbox(&tx, &a.user_id, m)?);
            }
            tx.commit().map_err(db_err)?;
            Ok(rows)
        })
        .await
    }

    async fn get_account(&self, user: &UserId) -> Result<Option<AccountRow>> {
        let user = *user;
        self.read(move |c| {
            let raw = c
                .query_row(
                    &format!("SELECT {ACCOUNT_COLS} FROM accounts WHERE user_id = ?1"),
                    params![user.as_bytes().as_slice()],
                    account_from_row,
                )
                .optional()
                .map_err(db_err)?;
            raw.map(account_decode).transpose()
        })
        .await
    }

    async fn list_accounts(&self) -> Result<Vec<AccountRow>> {
        self.read(move |c| {
            let mut stmt = c
                .prepare(&format!(
                    "SELECT {ACCOUNT_COLS} FROM accounts ORDER BY created, user_id"
                ))
                .map_err(db_err)?;
            let raws = stmt
                .query_map([], account_from_row)
                .map_err(db_err)?
                .collect::<rusqlite::Result<Vec<_>>>()
                .map_err(db_err)?;
            raws.into_iter().map(account_decode).collect()
        })
        .await
    }

    async fn delete_account(&self, user: &UserId) -> Result<bool> {
        let user = *user;
        let blobs = self
            .write(move |c| {
                let tx = c
                    .savepoint()
                    .map_err(db_err)?;
                let u = user.as_bytes().as_slice();
                let blobs: Vec<Vec<u8>> = {
                    let mut stmt = tx
                        .prepare("SELECT DISTINCT blob_id FROM messages WHERE user_id = ?1")
                        .map_err(db_err)?;
                    stmt.query_map(params![u], |r| r.get(0))
                        .map_err(db_err)?
                        .collect::<rusqlite::Result<_>>()
                        .map_err(db_err)?
                };
                tx.execute(
                    "DELETE FROM expunged WHERE mailbox_id IN (SELECT id FROM mailboxes WHERE user_id = ?1)",
                    params![u],
                )
                .map_err(db_err)?;
                tx.execute("DELETE FROM messages WHERE user_id = ?1", params![u]).map_err(db_err)?;
                tx.execute("DELETE FROM mailboxes WHERE user_id = ?1", params![u]).map_err(db_err)?;
                tx.execute("DELETE FROM slots WHERE user_id = ?1", params![u]).map_err(db_err)?;
                tx.execute("DELETE FROM keyring_links WHERE user_id = ?1", params![u]).map_err(db_err)?;
                tx.execute("DELETE FROM keyrings WHERE user_id = ?1", params![u]).map_err(db_err)?;
                let n = tx.execute("DELETE FROM accounts WHERE user_id = ?1", params![u]).map_err(db_err)?;
                // Blobs inside the database go with the rows; files are removed after.
                let ids = unreferenced(&tx, &blobs)?;
                tx.commit().map_err(db_err)?;
                Ok((n > 0, ids))
            })
            .await?;
        self.remove_blobs(&blobs.1);
        Ok(blobs.0)
    }

    async fn set_mode(
        &self,
        user: &UserId,
        mode: SecurityMode,
        escrow: Option<SlotRow>,
    ) -> Result<()> {
        let user = *user;
        self.write(move |c| {
            let tx = c.savepoint().map_err(db_err)?;
            let u = user.as_bytes().as_slice();
            let n = tx
                .execute(
                    "UPDATE accounts SET mode = ?1 WHERE user_id = ?2",
                    params![mode.code(), u],
                )
                .map_err(db_err)?;
            if n == 0 {
                return Err(StoreError::NotFound(format!("account {user}")));
            }
            tx.execute(
                "DELETE FROM slots WHERE user_id = ?1 AND kind = ?2",
                params![u, SlotKind::Escrow.code()],
            )
            .map_err(db_err)?;
            if let Some(s) = &escrow {
                insert_slot(&tx, s)?;
            }
            tx.commit().map_err(db_err)
        })
        .await
    }

    async fn reset_keyring(
        &self,
        user: &UserId,
        keyring: KeyringRow,
        slots: Vec<SlotRow>,
        mailboxes: Vec<NewMailbox>,
    ) -> Result<Vec<MailboxRow>> {
        let user = *user;
        self.write(move |c| {
            let tx = c
                .savepoint()
                .map_err(db_err)?;
            let u = user.as_bytes().as_slice();
            let n = tx
                .execute(
                    "UPDATE accounts SET generation = ?1, inbox = NULL WHERE user_id = ?2 AND generation < ?1",
                    params![keyring.generation.0, u],
                )
                .map_err(db_err)?;
            if n == 0 {
                return Err(StoreError::Conflict(format!("account {user} changed generation concurrently or is gone")));
            }
            // Escrow slots of older generations would let the operator open only old mail;
            // a new one for the new generation comes with `slots` in low mode.
            tx.execute(
                "DELETE FROM slots WHERE user_id = ?1 AND kind = ?2",
                params![u, SlotKind::Escrow.code()],
            )
            .map_err(db_err)?;
            tx.execute(
                "INSERT INTO keyrings (user_id, generation, public_key, created) VALUES (?1,?2,?3,?4)",
                params![u, keyring.generation.0, keyring.public_key.as_slice(), keyring.created],
            )
            .map_err(db_err)?;
            for s in &slots {
                insert_slot(&tx, s)?;
            }
            let mut rows = Vec::new();
            for m in &mailboxes {
                rows.push(insert_mailbox(&tx, &user, m)?);
            }
            tx.commit().map_err(db_err)?;
            Ok(rows)
        })
        .await
    }

    async fn list_keyrings(&self, user: &UserId) -> Result<Vec<KeyringRow>> {
        let user = *user;
        self.read(move |c| {
            let mut stmt = c
                .prepare("SELECT generation, public_key, created FROM keyrings WHERE user_id = ?1 ORDER BY generation")
                .map_err(db_err)?;
            let raws = stmt
                .query_map(params![user.as_bytes().as_slice()], |r| {
                    Ok((r.get::<_, i64>(0)?, r.get::<_, Vec<u8>>(1)?, r.get::<_, i64>(2)?))
                })
                .map_err(db_err)?
                .collect::<rusqlite::Result<Vec<_>>>()
                .map_err(db_err)?;
            raws.into_iter()
                .map(|(g, pk, created)| {
                    Ok(KeyringRow {
                        user_id: user,
                        generation: Generation(g as u32),
                        public_key: arr32(pk, "keyring")?,
                        created,
                    })
                })
                .collect()
        })
        .await
    }

    async fn list_links(&self, user: &UserId) -> Result<Vec<KeyringLinkRow>> {
        let user = *user;
        self.read(move |c| {
            let mut stmt = c
                .prepare("SELECT generation, sealed_under, wrapped FROM keyring_links WHERE user_id = ?1 ORDER BY generation")
                .map_err(db_err)?;
            stmt.query_map(params![user.as_bytes().as_slice()], |r| {
                Ok(KeyringLinkRow {
                    user_id: user,
                    generation: Generation(r.get::<_, i64>(0)? as u32),
                    sealed_under: Generation(r.get::<_, i64>(1)? as u32),
                    wrapped: r.get(2)?,
                })
            })
            .map_err(db_err)?
            .collect::<rusqlite::Result<Vec<_>>>()
            .map_err(db_err)
        })
        .await
    }

    async fn put_link(&self, link: KeyringLinkRow) -> Result<()> {
        self.write(move |c| {
            let tx = c
                .savepoint()
                .map_err(db_err)?;
            let u = link.user_id.as_bytes().as_slice();
            tx.execute(
                "INSERT INTO keyring_links (user_id, generation, sealed_under, wrapped) VALUES (?1,?2,?3,?4)
                 ON CONFLICT(user_id, generation) DO UPDATE SET sealed_under = excluded.sealed_under, wrapped = excluded.wrapped",
                params![u, link.generation.0, link.sealed_under.0, link.wrapped],
            )
            .map_err(db_err)?;
            tx.execute(
                "DELETE FROM slots WHERE user_id = ?1 AND generation = ?2",
                params![u, link.generation.0],
            )
            .map_err(db_err)?;
            tx.commit().map_err(db_err)
        })
        .await
    }

    async fn find_slot(&self, user: &UserId, locator: &[u8; 32]) -> Result<Option<SlotRow>> {
        let user = *user;
        let locator = *locator;
        self.read(move |c| {
            let raw = c
                .query_row(
                    &format!("SELECT {SLOT_COLS} FROM slots WHERE user_id = ?1 AND locator = ?2"),
                    params![user.as_bytes().as_slice(), locator.as_slice()],
                    slot_raw,
                )
                .optional()
                .map_err(db_err)?;
            raw.map(slot_decode).transpose()
        })
        .await
    }

    async fn list_slots(&self, user: &UserId) -> Result<Vec<SlotRow>> {
        let user = *user;
        self.read(move |c| {
            let mut stmt = c
                .prepare(&format!(
                    "SELECT {SLOT_COLS} FROM slots WHERE user_id = ?1 ORDER BY created, slot_id"
                ))
                .map_err(db_err)?;
            let raws = stmt
                .query_map(params![user.as_bytes().as_slice()], slot_raw)
                .map_err(db_err)?
                .collect::<rusqlite::Result<Vec<_>>>()
                .map_err(db_err)?;
            raws.into_iter().map(slot_decode).collect()
        })
        .await
    }

    async fn replace_slots(
        &self,
        user: &UserId,
        add: Vec<SlotRow>,
        remove: Vec<SlotId>,
    ) -> Result<()> {
        let user = *user;
        self.write(move |c| {
            let tx = c.savepoint().map_err(db_err)?;
            for id in &remove {
                tx.execute(
                    "DELETE FROM slots WHERE user_id = ?1 AND slot_id = ?2",
                    params![user.as_bytes().as_slice(), id.as_bytes().as_slice()],
                )
                .map_err(db_err)?;
            }
            for s in &add {
                insert_slot(&tx, s)?;
            }
            tx.commit().map_err(db_err)
        })
        .await
    }

    async fn touch_slot(&self, user: &UserId, slot: &SlotId, when: i64) -> Result<()> {
        let user = *user;
        let slot = *slot;
        self.write(move |c| {
            c.execute(
                "UPDATE slots SET last_used = ?1 WHERE user_id = ?2 AND slot_id = ?3",
                params![when, user.as_bytes().as_slice(), slot.as_bytes().as_slice()],
            )
            .map_err(db_err)?;
            Ok(())
        })
        .await
    }

    async fn list_mailboxes(&self, user: &UserId) -> Result<Vec<MailboxRow>> {
        let user = *user;
        self.read(move |c| {
            let mut stmt = c
                .prepare_cached(&format!(
                    "SELECT {MAILBOX_COLS} FROM mailboxes WHERE user_id = ?1 ORDER BY id"
                ))
                .map_err(db_err)?;
            let raws = stmt
                .query_map(params![user.as_bytes().as_slice()], mailbox_raw)
                .map_err(db_err)?
                .collect::<rusqlite::Result<Vec<_>>>()
                .map_err(db_err)?;
            raws.into_iter().map(mailbox_decode).collect()
        })
        .await
    }

    async fn get_mailbox(&self, user: &UserId, id: MailboxId) -> Result<Option<MailboxRow>> {
        let user = *user;
        self.read(move |c| {
            let raw = c
                .query_row(
                    &format!("SELECT {MAILBOX_COLS} FROM mailboxes WHERE user_id = ?1 AND id = ?2"),
                    params![user.as_bytes().as_slice(), id.0],
                    mailbox_raw,
                )
                .optional()
                .map_err(db_err)?;
            raw.map(mailbox_decode).transpose()
        })
        .await
    }

    async fn find_mailbox(&self, user: &UserId, lookup: &[u8; 32]) -> Result<Option<MailboxRow>> {
        let user = *user;
        let lookup = *lookup;
        self.read(move |c| {
            let raw = c
                .query_row(
                    &format!(
                        "SELECT {MAILBOX_COLS} FROM mailboxes WHERE user_id = ?1 AND lookup = ?2"
                    ),
                    params![user.as_bytes().as_slice(), lookup.as_slice()],
                    mailbox_raw,
                )
                .optional()
                .map_err(db_err)?;
            raw.map(mailbox_decode).transpose()
        })
        .await
    }

    async fn create_mailbox(&self, user: &UserId, new: NewMailbox) -> Result<MailboxRow> {
        let user = *user;
        self.write(move |c| {
            let tx = c.savepoint().map_err(db_err)?;
            let exists: bool = tx
                .query_row(
                    "SELECT 1 FROM accounts WHERE user_id = ?1",
                    params![user.as_bytes().as_slice()],
                    |_| Ok(true),
                )
                .optional()
                .map_err(db_err)?
                .unwrap_or(false);
            if !exists {
                return Err(StoreError::NotFound(format!("account {user}")));
            }
            let row = insert_mailbox(&tx, &user, &new)?;
            tx.commit().map_err(db_err)?;
            Ok(row)
        })
        .await
    }

    async fn update_mailbox(
        &self,
        user: &UserId,
        id: MailboxId,
        generation: Generation,
        sealed: Vec<u8>,
        lookup: [u8; 32],
    ) -> Result<()> {
        let user = *user;
        self.write(move |c| {
            let n = c
                .execute(
                    "UPDATE mailboxes SET generation = ?1, sealed = ?2, lookup = ?3 WHERE user_id = ?4 AND id = ?5",
                    params![generation.0, sealed, lookup.as_slice(), user.as_bytes().as_slice(), id.0],
                )
                .map_err(|e| match db_err(e) {
                    StoreError::Conflict(_) => StoreError::Conflict("a mailbox with that name exists".into()),
                    other => other,
                })?;
            if n == 0 {
                return Err(StoreError::NotFound(format!("mailbox {id}")));
            }
            Ok(())
        })
        .await
    }

    async fn delete_mailbox(&self, user: &UserId, id: MailboxId) -> Result<()> {
        let user = *user;
        let gone = self
            .write(move |c| {
                let tx = c.savepoint().map_err(db_err)?;
                let u = user.as_bytes().as_slice();
                let blobs: Vec<Vec<u8>> = {
                    let mut stmt = tx
                        .prepare(
                            "SELECT blob_id FROM messages WHERE mailbox_id = ?1 AND user_id = ?2",
                        )
                        .map_err(db_err)?;
                    stmt.query_map(params![id.0, u], |r| r.get(0))
                        .map_err(db_err)?
                        .collect::<rusqlite::Result<_>>()
                        .map_err(db_err)?
                };
                let n = tx
                    .execute(
                        "DELETE FROM mailboxes WHERE id = ?1 AND user_id = ?2",
                        params![id.0, u],
                    )
                    .map_err(db_err)?;
                if n == 0 {
                    return Err(StoreError::NotFound(format!("mailbox {id}")));
                }
                tx.execute("DELETE FROM messages WHERE mailbox_id = ?1", params![id.0])
                    .map_err(db_err)?;
                tx.execute("DELETE FROM expunged WHERE mailbox_id = ?1", params![id.0])
                    .map_err(db_err)?;
                tx.execute(
                    "UPDATE accounts SET inbox = NULL WHERE user_id = ?1 AND inbox = ?2",
                    params![u, id.0],
                )
                .map_err(db_err)?;
                let gone = unreferenced(&tx, &blobs)?;
                tx.commit().map_err(db_err)?;
                Ok(gone)
            })
            .await?;
        self.remove_blobs(&gone);
        Ok(())
    }

    async fn append(
        &self,
        user: &UserId,
        mailbox: MailboxId,
        messages: Vec<NewMessage>,
    ) -> Result<(Vec<Uid>, ModSeq)> {
        let user = *user;
        self.write(move |c| {
            let tx = c
                .savepoint()
                .map_err(db_err)?;
            let (next, hms) = mailbox_counters(&tx, &user, mailbox)?;
            let modseq = hms + 1;
            let last = next as u64 + messages.len() as u64;
            if last > u32::MAX as u64 {
                return Err(StoreError::Conflict(format!("mailbox {mailbox} has used every UID")));
            }
            let mut uids = Vec::with_capacity(messages.len());
            {
                let mut stmt = tx
                    .prepare_cached(&format!("INSERT INTO messages (user_id, {MESSAGE_COLS}) VALUES (?1,?2,?3,?4,?5,?6,?7,?8,?9,?10,?11)"))
                    .map_err(db_err)?;
                for (i, m) in messages.iter().enumerate() {
                    let uid = next + i as u32;
                    stmt.execute(params![
                        user.as_bytes().as_slice(),
                        mailbox.0,
                        uid,
                        modseq as i64,
                        m.msg_id.as_bytes().as_slice(),
                        m.blob_id.as_bytes().as_slice(),
                        m.blob_len as i64,
                        m.seal.kind_code(),
                        m.seal.generation().0,
                        m.sealed_meta,
                        m.sealed_flags,
                    ])
                    .map_err(db_err)?;
                    uids.push(Uid::new(uid).ok_or_else(|| StoreError::Database("uid 0".into()))?);
                }
            }
            tx.execute(
                "UPDATE mailboxes SET uidnext = ?1, highest_modseq = ?2 WHERE id = ?3",
                params![last as i64, modseq as i64, mailbox.0],
            )
            .map_err(db_err)?;
            tx.commit().map_err(db_err)?;
            Ok((uids, ModSeq::new(modseq).expect("modseq starts at 1")))
        })
        .await
    }

    async fn list_messages(&self, user: &UserId, mailbox: MailboxId) -> Result<Vec<MessageRow>> {
        let user = *user;
        self.read(move |c| {
            let mut stmt = c
                .prepare_cached(&format!(
                    "SELECT {MESSAGE_COLS} FROM messages WHERE mailbox_id = ?1 AND user_id = ?2 ORDER BY uid"
                ))
                .map_err(db_err)?;
            let raws = stmt
                .query_map(params![mailbox.0, user.as_bytes().as_slice()], message_raw)
                .map_err(db_err)?
                .collect::<rusqlite::Result<Vec<_>>>()
                .map_err(db_err)?;
            raws.into_iter().map(message_decode).collect()
        })
        .await
    }

    async fn get_messages(
        &self,
        user: &UserId,
        mailbox: MailboxId,
        uids: Vec<Uid>,
    ) -> Result<Vec<MessageRow>> {
        let user = *user;
        self.read(move |c| {
            let mut out = Vec::with_capacity(uids.len());
            let mut sorted: Vec<u32> = uids.iter().map(|u| u.get()).collect();
            sorted.sort_unstable();
            sorted.dedup();
            // SQLite allows 32766 host parameters; stay well under it.
            for chunk in sorted.chunks(500) {
                let mut values: Vec<rusqlite::types::Value> = vec![mailbox.0.into(), user.as_bytes().to_vec().into()];
                let (first, last) = (chunk[0], chunk[chunk.len() - 1]);
                // A run of consecutive UIDs (the last 50, a page of a list) is one range
                // scan of the index instead of one lookup per UID.
                let sql = if (last - first) as usize + 1 == chunk.len() {
                    values.extend([i64::from(first).into(), i64::from(last).into()]);
                    format!("SELECT {MESSAGE_COLS} FROM messages WHERE mailbox_id = ? AND user_id = ? AND uid BETWEEN ? AND ? ORDER BY uid")
                } else {
                    values.extend(chunk.iter().map(|u| rusqlite::types::Value::from(*u as i64)));
                    let marks = vec!["?"; chunk.len()].join(",");
                    format!("SELECT {MESSAGE_COLS} FROM messages WHERE mailbox_id = ? AND user_id = ? AND uid IN ({marks}) ORDER BY uid")
                };
                let mut stmt = c.prepare_cached(&sql).map_err(db_err)?;
                let raws = stmt
                    .query_map(rusqlite::params_from_iter(values), message_raw)
                    .map_err(db_err)?
                    .collect::<rusqlite::Result<Vec<_>>>()
                    .map_err(db_err)?;
                for raw in raws {
                    out.push(message_decode(raw)?);
                }
            }
            Ok(out)
        })
        .await
    }

    async fn stored_bytes(&self, user: &UserId) -> Result<u64> {
        let user = *user;
        self.read(move |c| {
            c.query_row(
                "SELECT COALESCE(SUM(blob_len), 0) FROM messages WHERE user_id = ?1",
                params![user.as_bytes().as_slice()],
                |r| r.get::<_, i64>(0),
            )
            .map(|v| v as u64)
            .map_err(db_err)
        })
        .await
    }

    async fn list_flags(&self, user: &UserId, mailbox: MailboxId) -> Result<Vec<FlagRow>> {
        let user = *user;
        self.read(move |c| {
            let mut stmt = c
                .prepare_cached(
                    "SELECT uid, modseq, msg_id, seal_kind, seal_gen, sealed_flags FROM messages
                     WHERE mailbox_id = ?1 AND user_id = ?2 ORDER BY uid",
                )
                .map_err(db_err)?;
            flag_rows(
                mailbox,
                stmt.query(params![mailbox.0, user.as_bytes().as_slice()])
                    .map_err(db_err)?,
            )
        })
        .await
    }

    async fn flags_changed_since(
        &self,
        user: &UserId,
        mailbox: MailboxId,
        since: u64,
    ) -> Result<(Vec<FlagRow>, Vec<Uid>)> {
        let user = *user;
        self.read(move |c| {
            let u = user.as_bytes().as_slice();
            let above = i64::try_from(since).unwrap_or(i64::MAX);
            // By the MODSEQ index (a range of the few changed rows), then put in UID order
            // here: with `ORDER BY uid` SQLite would rather walk the whole mailbox by key.
            let mut stmt = c
                .prepare_cached(
                    "SELECT uid, modseq, msg_id, seal_kind, seal_gen, sealed_flags
                     FROM messages INDEXED BY messages_by_modseq
                     WHERE mailbox_id = ?1 AND modseq > ?3 AND user_id = ?2",
                )
                .map_err(db_err)?;
            let mut rows = flag_rows(
                mailbox,
                stmt.query(params![mailbox.0, u, above]).map_err(db_err)?,
            )?;
            rows.sort_by_key(|r| r.uid);
            let gone = expunged_uids(c, &user, mailbox, since)?;
            Ok((rows, gone))
        })
        .await
    }

    async fn get_message(
        &self,
        user: &UserId,
        mailbox: MailboxId,
        uid: Uid,
    ) -> Result<Option<MessageRow>> {
        let user = *user;
        self.read(move |c| {
            let raw = c
                .query_row(
                    &format!("SELECT {MESSAGE_COLS} FROM messages WHERE mailbox_id = ?1 AND uid = ?2 AND user_id = ?3"),
                    params![mailbox.0, uid.get(), user.as_bytes().as_slice()],
                    message_raw,
                )
                .optional()
                .map_err(db_err)?;
            raw.map(message_decode).transpose()
        })
        .await
    }

    async fn set_flags(
        &self,
        user: &UserId,
        mailbox: MailboxId,
        changes: Vec<(Uid, Vec<u8>)>,
        unchanged_since: Option<u64>,
    ) -> Result<FlagUpdate> {
        let user = *user;
        self.write(move |c| {
            let tx = c
                .savepoint()
                .map_err(db_err)?;
            let (_, hms) = mailbox_counters(&tx, &user, mailbox)?;
            let modseq = hms + 1;
            let mut out = FlagUpdate::default();
            {
                let mut get = tx
                    .prepare_cached("SELECT modseq FROM messages WHERE mailbox_id = ?1 AND uid = ?2")
                    .map_err(db_err)?;
                let mut put = tx
                    .prepare_cached("UPDATE messages SET sealed_flags = ?1, modseq = ?2 WHERE mailbox_id = ?3 AND uid = ?4")
                    .map_err(db_err)?;
                for (uid, flags) in &changes {
                    let current: Option<i64> = get
                        .query_row(params![mailbox.0, uid.get()], |r| r.get(0))
                        .optional()
                        .map_err(db_err)?;
                    let Some(current) = current else { continue };
                    if unchanged_since.is_some_and(|since| current as u64 > since) {
                        out.skipped.push(*uid);
                        continue;
                    }
                    put.execute(params![flags, modseq as i64, mailbox.0, uid.get()])
                        .map_err(db_err)?;
                    out.changed.push(*uid);
                }
            }
            if !out.changed.is_empty() {
                tx.execute(
                    "UPDATE mailboxes SET highest_modseq = ?1 WHERE id = ?2",
                    params![modseq as i64, mailbox.0],
                )
                .map_err(db_err)?;
                out.modseq = ModSeq::new(modseq);
            }
            tx.commit().map_err(db_err)?;
            Ok(out)
        })
        .await
    }

    async fn reseal_message(
        &self,
        user: &UserId,
        msg: &MsgId,
        seal: SealRef,
        sealed_meta: Vec<u8>,
        empty_flags: Vec<u8>,
    ) -> Result<bool> {
        let user = *user;
        let msg = *msg;
        self.write(move |c| {
            let n = c
                .execute(
                    "UPDATE messages SET seal_kind = ?1, seal_gen = ?2, sealed_meta = ?3,
                            sealed_flags = COALESCE(sealed_flags, ?4)
                     WHERE msg_id = ?5 AND user_id = ?6 AND seal_kind = 2",
                    params![
                        seal.kind_code(),
                        seal.generation().0,
                        sealed_meta,
                        empty_flags,
                        msg.as_bytes().as_slice(),
                        user.as_bytes().as_slice()
                    ],
                )
                .map_err(db_err)?;
            Ok(n > 0)
        })
        .await
    }

    async fn replace_sealed_meta(
        &self,
        user: &UserId,
        rows: Vec<(MsgId, SealRef, Vec<u8>)>,
    ) -> Result<usize> {
        let user = *user;
        self.write(move |c| {
            let tx = c.savepoint().map_err(db_err)?;
            let mut n = 0;
            {
                let mut stmt = tx
                    .prepare_cached(
                        "UPDATE messages SET sealed_meta = ?1
                         WHERE msg_id = ?2 AND user_id = ?3 AND seal_kind = ?4 AND seal_gen = ?5",
                    )
                    .map_err(db_err)?;
                for (msg, seal, meta) in &rows {
                    n += stmt
                        .execute(params![
                            meta,
                            msg.as_bytes().as_slice(),
                            user.as_bytes().as_slice(),
                            seal.kind_code(),
                            seal.generation().0
                        ])
                        .map_err(db_err)?;
                }
            }
            tx.commit().map_err(db_err)?;
            Ok(n)
        })
        .await
    }

    async fn expunge(
        &self,
        user: &UserId,
        mailbox: MailboxId,
        uids: Vec<Uid>,
    ) -> Result<(Vec<Uid>, Option<ModSeq>)> {
        let user = *user;
        let (removed, modseq, gone) = self
            .write(move |c| {
                let tx = c
                    .savepoint()
                    .map_err(db_err)?;
                let (_, hms) = mailbox_counters(&tx, &user, mailbox)?;
                let modseq = hms + 1;
                let mut removed = Vec::new();
                let mut blobs = Vec::new();
                {
                    let mut del = tx
                        .prepare_cached("DELETE FROM messages WHERE mailbox_id = ?1 AND uid = ?2 RETURNING blob_id")
                        .map_err(db_err)?;
                    let mut log = tx
                        .prepare_cached("INSERT OR REPLACE INTO expunged (mailbox_id, uid, modseq) VALUES (?1, ?2, ?3)")
                        .map_err(db_err)?;
                    for uid in &uids {
                        let blob: Option<Vec<u8>> = del
                            .query_row(params![mailbox.0, uid.get()], |r| r.get(0))
                            .optional()
                            .map_err(db_err)?;
                        if let Some(b) = blob {
                            log.execute(params![mailbox.0, uid.get(), modseq as i64]).map_err(db_err)?;
                            removed.push(*uid);
                            blobs.push(b);
                        }
                    }
                }
                if removed.is_empty() {
                    return Ok((removed, None, Vec::new()));
                }
                tx.execute(
                    "UPDATE mailboxes SET highest_modseq = ?1 WHERE id = ?2",
                    params![modseq as i64, mailbox.0],
                )
                .map_err(db_err)?;
                let gone = unreferenced(&tx, &blobs)?;
                tx.commit().map_err(db_err)?;
                Ok((removed, ModSeq::new(modseq), gone))
            })
            .await?;
        self.remove_blobs(&gone);
        Ok((removed, modseq))
    }

    async fn move_messages(
        &self,
        user: &UserId,
        from: MailboxId,
        uids: Vec<Uid>,
        to: MailboxId,
    ) -> Result<Vec<(Uid, Uid)>> {
        let user = *user;
        self.write(move |c| {
            let tx = c
                .savepoint()
                .map_err(db_err)?;
            let (_, from_hms) = mailbox_counters(&tx, &user, from)?;
            let (mut next, to_hms) = mailbox_counters(&tx, &user, to)?;
            let (from_modseq, to_modseq) = (from_hms + 1, to_hms + 1);
            let mut pairs = Vec::new();
            {
                let mut upd = tx
                    .prepare_cached("UPDATE messages SET mailbox_id = ?1, uid = ?2, modseq = ?3 WHERE mailbox_id = ?4 AND uid = ?5")
                    .map_err(db_err)?;
                let mut log = tx
                    .prepare_cached("INSERT OR REPLACE INTO expunged (mailbox_id, uid, modseq) VALUES (?1, ?2, ?3)")
                    .map_err(db_err)?;
                for uid in &uids {
                    if next == u32::MAX {
                        return Err(StoreError::Conflict(format!("mailbox {to} has used every UID")));
                    }
                    let n = upd
                        .execute(params![to.0, next, to_modseq as i64, from.0, uid.get()])
                        .map_err(db_err)?;
                    if n == 1 {
                        log.execute(params![from.0, uid.get(), from_modseq as i64]).map_err(db_err)?;
                        pairs.push((*uid, Uid::new(next).expect("uidnext >= 1")));
                        next += 1;
                    }
                }
            }
            if !pairs.is_empty() {
                tx.execute("UPDATE mailboxes SET highest_modseq = ?1 WHERE id = ?2", params![from_modseq as i64, from.0])
                    .map_err(db_err)?;
                tx.execute(
                    "UPDATE mailboxes SET uidnext = ?1, highest_modseq = ?2 WHERE id = ?3",
                    params![next as i64, to_modseq as i64, to.0],
                )
                .map_err(db_err)?;
            }
            tx.commit().map_err(db_err)?;
            Ok(pairs)
        })
        .await
    }

    async fn expunged_since(
        &self,
        user: &UserId,
        mailbox: MailboxId,
        since: u64,
    ) -> Result<Vec<Uid>> {
        let user = *user;
        self.read(move |c| expunged_uids(c, &user, mailbox, since))
            .await
    }

    async fn put_blob(&self, _user: &UserId, blob: &BlobId, data: Vec<u8>) -> Result<()> {
        if data.len() <= INLINE_BLOB_MAX {
            return self.put_inline_blob(blob, data).await;
        }
        check_free_space(&self.inner.dir, data.len() as u64, 0)?;
        let final_path = self.blob_path(blob);
        let tmp_dir = self.inner.dir.join("blobs").join("tmp");
        let tmp_path = tmp_dir.join(format!("{}.tmp", blob.to_hex()));
        tokio::task::spawn_blocking(move || {
            let result = write_blob_with(
                &tmp_path,
                &final_path,
                Box::new(move |w| w.write_all(&data)),
            )
            .map(|_| ());
            if result.is_err() {
                // Nothing half-written stays behind: the temp file goes, the final name was
                // never created (rename is atomic).
                let _ = fs::remove_file(&tmp_path);
            }
            result
        })
        .await
        .map_err(|e| StoreError::Unavailable(format!("storage task failed: {e}")))?
    }

    async fn put_blob_streamed(
        &self,
        _user: &UserId,
        blob: &BlobId,
        write: crate::BlobWriter,
    ) -> Result<u64> {
        let final_path = self.blob_path(blob);
        let tmp_path = self
            .inner
            .dir
            .join("blobs")
            .join("tmp")
            .join(format!("{}.tmp", blob.to_hex()));
        let dir = self.inner.dir.clone();
        let written = tokio::task::spawn_blocking(move || {
            // The size is known only at the end. A blob that stays small is checked where
            // it is stored (with the database's free pages); one that becomes a file is
            // checked when it spills over and again with its length before it is kept.
            let mut spill = Spill {
                dir: &dir,
                tmp_path: &tmp_path,
                buf: Vec::new(),
                file: None,
                written: 0,
            };
            let result = (|| {
                write(&mut spill).map_err(|e| StoreError::io("writing a blob", e))?;
                match spill.file.take() {
                    // Checked again where it is stored, with the database's free pages.
                    None => Ok(Spilled::Inline(std::mem::take(&mut spill.buf))),
                    Some(w) => {
                        check_free_space(&dir, spill.written, 0)?;
                        finish_blob_file(w, &tmp_path, &final_path).map(Spilled::File)
                    }
                }
            })();
            if result.is_err() {
                let _ = fs::remove_file(&tmp_path);
            }
            result
        })
        .await
        .map_err(|e| StoreError::Unavailable(format!("storage task failed: {e}")))??;
        match written {
            Spilled::File(len) => Ok(len),
            Spilled::Inline(data) => {
                let len = data.len() as u64;
                self.put_inline_blob(blob, data).await?;
                Ok(len)
            }
        }
    }

    async fn get_blob(&self, _user: &UserId, blob: &BlobId) -> Result<Vec<u8>> {
        let path = self.blob_path(blob);
        let blob = *blob;
        self.read(move |c| {
            if let Some(data) = inline_blob(c, &blob)? {
                return Ok(data);
            }
            fs::read(&path).map_err(|e| blob_read_error(&blob, e))
        })
        .await
    }

    async fn open_blob(&self, _user: &UserId, blob: &BlobId) -> Result<crate::BlobReader> {
        let path = self.blob_path(blob);
        let blob = *blob;
        self.read(move |c| {
            if let Some(data) = inline_blob(c, &blob)? {
                return Ok(Box::new(std::io::Cursor::new(data)) as crate::BlobReader);
            }
            let file = fs::File::open(&path).map_err(|e| blob_read_error(&blob, e))?;
            // Small: the body reader asks for whole age chunks (64 KiB + tag + 1), which a
            // BufReader smaller than that reads straight into the caller's buffer instead of
            // copying them through its own; this one serves the header lines.
            Ok(Box::new(std::io::BufReader::with_capacity(16 * 1024, file)) as crate::BlobReader)
        })
        .await
    }

    async fn data_version(&self) -> Result<u64> {
        // On the writer connection: its value changes when any other connection commits.
        self.write(|c| {
            c.query_row("PRAGMA data_version", [], |r| r.get::<_, i64>(0))
                .map(|v| v as u64)
                .map_err(db_err)
        })
        .await
    }

    async fn check(&self) -> Result<Vec<String>> {
        let dir = self.inner.dir.clone();
        self.read(move |c| {
            let mut problems = Vec::new();
            let mut stmt = c.prepare("PRAGMA integrity_check").map_err(db_err)?;
            let lines: Vec<String> = stmt
                .query_map([], |r| r.get(0))
                .map_err(db_err)?
                .collect::<rusqlite::Result<_>>()
                .map_err(db_err)?;
            if lines != ["ok"] {
                problems.extend(lines.into_iter().map(|l| format!("database: {l}")));
            }
            let mut stmt = c
                .prepare("SELECT mailbox_id, uid, blob_id, blob_len FROM messages")
                .map_err(db_err)?;
            let rows = stmt
                .query_map([], |r| Ok((r.get::<_, i64>(0)?, r.get::<_, i64>(1)?, r.get::<_, Vec<u8>>(2)?, r.get::<_, i64>(3)?)))
                .map_err(db_err)?;
            let mut inline = c
                .prepare("SELECT length(data) FROM blobs WHERE blob_id = ?1")
                .map_err(db_err)?;
            let mut referenced = HashSet::new();
            for row in rows {
                let (mbox, uid, blob, len) = row.map_err(db_err)?;
                let Ok(blob) = blob_from(blob, "blob").map(BlobId) else {
                    problems.push(format!("message {mbox}/{uid}: malformed blob id"));
                    continue;
                };
                let hex = blob.to_hex();
                let inline_len: Option<i64> = inline
                    .query_row(params![blob.as_bytes().as_slice()], |r| r.get(0))
                    .optional()
                    .map_err(db_err)?;
                if let Some(stored) = inline_len {
                    if stored != len {
                        problems.push(format!(
                            "message {mbox}/{uid}: blob {hex} is {stored} bytes, expected {len}"
                        ));
                    }
                    referenced.insert(blob);
                    continue;
                }
                let path = dir.join("blobs").join(&hex[..2]).join(&hex);
                match fs::metadata(&path) {
                    Ok(m) if m.len() == len as u64 => {}
                    Ok(m) => problems.push(format!(
                        "message {mbox}/{uid}: blob {hex} is {} bytes, expected {len}",
                        m.len()
                    )),
                    Err(_) => problems.push(format!("message {mbox}/{uid}: blob {hex} is missing")),
                }
                referenced.insert(blob);
            }
            let bad_uids: i64 = c
                .query_row(
                    "SELECT count(*) FROM messages m JOIN mailboxes b ON b.id = m.mailbox_id
                     WHERE m.uid >= b.uidnext OR m.modseq > b.highest_modseq OR m.user_id != b.user_id",
                    [],
                    |r| r.get(0),
                )
                .map_err(db_err)?;
            if bad_uids > 0 {
                problems.push(format!("{bad_uids} messages have a UID or MODSEQ beyond their mailbox's counters"));
            }
            let orphans: i64 = c
                .query_row(
                    "SELECT count(*) FROM messages m LEFT JOIN mailboxes b ON b.id = m.mailbox_id WHERE b.id IS NULL",
                    [],
                    |r| r.get(0),
                )
                .map_err(db_err)?;
            if orphans > 0 {
                problems.push(format!("{orphans} messages belong to no mailbox"));
            }
            Ok(problems)
        })
        .await
    }

    async fn sweep_orphans(&self, min_age_secs: u64) -> Result<usize> {
        // Blobs inside the database that no row references, once old enough that no
        // append can still be about to commit the row that will.
        let cutoff = now().saturating_sub(i64::try_from(min_age_secs).unwrap_or(i64::MAX));
        let swept_inline = self
            .write(move |c| {
                c.execute(
                    "DELETE FROM blobs WHERE created <= ?1
                     AND NOT EXISTS (SELECT 1 FROM messages m WHERE m.blob_id = blobs.blob_id)",
                    params![cutoff],
                )
                .map_err(db_err)
            })
            .await?;
        let store = self.clone();
        let referenced: HashSet<Vec<u8>> = self
            .read(|c| {
                let mut stmt = c
                    .prepare("SELECT DISTINCT blob_id FROM messages")
                    .map_err(db_err)?;
                stmt.query_map([], |r| r.get::<_, Vec<u8>>(0))
                    .map_err(db_err)?
                    .collect::<rusqlite::Result<_>>()
                    .map_err(db_err)
            })
            .await?;
        tokio::task::spawn_blocking(move || {
            let min_age = Duration::from_secs(min_age_secs);
            let old_enough = |p: &Path| {
                fs::metadata(p)
                    .and_then(|m| m.modified())
                    .ok()
                    .and_then(|t| t.elapsed().ok())
                    .is_some_and(|age| age >= min_age)
            };
            let blobs = store.inner.dir.join("blobs");
            let mut removed = 0;
            let entries = fs::read_dir(&blobs).map_err(|e| StoreError::io("listing blobs", e))?;
            for shard in entries.flatten() {
                let shard_path = shard.path();
                let is_tmp = shard.file_name() == "tmp";
                let Ok(files) = fs::read_dir(&shard_path) else {
                    continue;
                };
                for f in files.flatten() {
                    let path = f.path();
                    let name = f.file_name().to_string_lossy().to_string();
                    let keep = !is_tmp
                        && BlobId::from_hex(&name)
                            .is_some_and(|b| referenced.contains(b.as_bytes().as_slice()));
                    if !keep && old_enough(&path) && fs::remove_file(&path).is_ok() {
                        removed += 1;
                    }
                }
            }
            Ok(removed + swept_inline)
        })
        .await
        .map_err(|e| StoreError::Unavailable(format!("storage task failed: {e}")))?
    }
}

/// Writes a blob to its temp file through `write`, fsyncs it, renames it into place and
/// fsyncs the directory: after this returns the blob survives a crash.
fn write_blob_with(tmp_path: &Path, final_path: &Path, write: crate::BlobWriter) -> Result<u64> {
    let ctx = "writing a blob";
    let f = fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .open(tmp_path)
        .map_err(|e| StoreError::io(ctx, e))?;
    let mut w = std::io::BufWriter::with_capacity(64 * 1024, f);
    write(&mut w).map_err(|e| StoreError::io(ctx, e))?;
    finish_blob_file(w, tmp_path, final_path)
}

/// Flushes and fsyncs a blob's temp file, renames it into place and fsyncs the directory.
fn finish_blob_file(
    w: std::io::BufWriter<fs::File>,
    tmp_path: &Path,
    final_path: &Path,
) -> Result<u64> {
    let ctx = "writing a blob";
    let f = w
        .into_inner()
        .map_err(|e| StoreError::io(ctx, e.into_error()))?;
    f.sync_all().map_err(|e| StoreError::io(ctx, e))?;
    let len = f.metadata().map_err(|e| StoreError::io(ctx, e))?.len();
    drop(f);
    let shard = final_path
        .parent()
        .ok_or_else(|| StoreError::Database("blob path has no parent".into()))?;
    fs::create_dir_all(shard).map_err(|e| StoreError::io(ctx, e))?;
    fs::rename(tmp_path, final_path).map_err(|e| StoreError::io(ctx, e))?;
    fsync_dir(shard)?;
    Ok(len)
}

/// A streamed blob, kept in memory while it fits inside the database
/// ([`INLINE_BLOB_MAX`]); once it grows past that it moves to its temp file and goes on
/// there, so memory stays bounded whatever the blob's size.
struct Spill<'a> {
    dir: &'a Path,
    tmp_path: &'a Path,
    buf: Vec<u8>,
    file: Option<std::io::BufWriter<fs::File>>,
    /// Bytes taken so far (in `buf` or the file, buffered or not).
    written: u64,
}

enum Spilled {
    Inline(Vec<u8>),
    File(u64),
}

impl std::io::Write for Spill<'_> {
    fn write(&mut self, data: &[u8]) -> std::io::Result<usize> {
        if let Some(f) = &mut self.file {
            let n = f.write(data)?;
            self.written += n as u64;
            return Ok(n);
        }
        if self.buf.len() + data.len() <= INLINE_BLOB_MAX {
            self.buf.extend_from_slice(data);
            self.written += data.len() as u64;
            return Ok(data.len());
        }
        check_free_space(self.dir, self.buf.len() as u64, 0).map_err(|e| match e {
            StoreError::Io { source, .. } => source,
            other => std::io::Error::new(std::io::ErrorKind::StorageFull, other.to_string()),
        })?;
        let f = fs::OpenOptions::new()
            .write(true)
            .create_new(true)
            .open(self.tmp_path)?;
        let mut w = std::io::BufWriter::with_capacity(64 * 1024, f);
        w.write_all(&self.buf)?;
        self.buf = Vec::new();
        let n = w.write(data)?;
        self.written += n as u64;
        self.file = Some(w);
        Ok(n)
    }

    fn flush(&mut self) -> std::io::Result<()> {
        match &mut self.file {
            Some(f) => f.flush(),
            None => Ok(()),
        }
    }
}

/// The blob's bytes if it is stored inside the database.
fn inline_blob(c: &Connection, blob: &BlobId) -> Result<Option<Vec<u8>>> {
    c.prepare_cached("SELECT data FROM blobs WHERE blob_id = ?1")
        .map_err(db_err)?
        .query_row(params![blob.as_bytes().as_slice()], |r| r.get(0))
        .optional()
        .map_err(db_err)
}

fn blob_read_error(blob: &BlobId, e: std::io::Error) -> StoreError {
    if e.kind() == std::io::ErrorKind::NotFound {
        StoreError::NotFound(format!("blob {blob}"))
    } else {
        StoreError::io(format!("reading blob {blob}"), e)
    }
}

// --- raw export and import (`coffer migrate`) ------------------------------------------------

impl SqliteStore {
    /// Every meta key/value pair, as stored.
    pub async fn export_meta(&self) -> Result<Vec<(String, Vec<u8>)>> {
        self.read(|c| {
            let mut st = c
                .prepare("SELECT key, value FROM meta ORDER BY key")
                .map_err(db_err)?;
            let rows = st
                .query_map([], |r| {
                    Ok((r.get::<_, String>(0)?, r.get::<_, Vec<u8>>(1)?))
                })
                .map_err(db_err)?;
            rows.collect::<std::result::Result<Vec<_>, _>>()
                .map_err(db_err)
        })
        .await
    }

    /// The expunge records of every mailbox of `user`, as stored.
    pub async fn export_expunged(&self, user: &UserId) -> Result<Vec<crate::ExpungedRow>> {
        let user = *user;
        self.read(move |c| {
            let mut st = c
                .prepare(
                    "SELECT e.mailbox_id, e.uid, e.modseq FROM expunged e
                     JOIN mailboxes m ON m.id = e.mailbox_id
                     WHERE m.user_id = ?1 ORDER BY e.mailbox_id, e.uid",
                )
                .map_err(db_err)?;
            let rows = st
                .query_map(params![user.as_bytes().as_slice()], |r| {
                    Ok((
                        r.get::<_, i64>(0)?,
                        r.get::<_, i64>(1)?,
                        r.get::<_, i64>(2)?,
                    ))
                })
                .map_err(db_err)?;
            let mut out = Vec::new();
            for row in rows {
                let (mailbox, uid, modseq) = row.map_err(db_err)?;
                let bad = || StoreError::Corrupt {
                    object: format!("expunge record {mailbox}/{uid}"),
                    reason: "uid or modseq out of range".into(),
                };
                out.push(crate::ExpungedRow {
                    mailbox: MailboxId(mailbox),
                    uid: u32::try_from(uid).ok().and_then(Uid::new).ok_or_else(bad)?,
                    modseq: u64::try_from(modseq)
                        .ok()
                        .and_then(ModSeq::new)
                        .ok_or_else(bad)?,
                });
            }
            Ok(out)
        })
        .await
    }

    /// Inserts every row of one user exactly as given (ids, UIDVALIDITY, UIDNEXT and
    /// MODSEQs included), in one transaction. Blobs are stored separately with
    /// [`Store::put_blob`]. Fails with a conflict if any row exists.
    pub async fn import_user(&self, u: crate::UserExport) -> Result<()> {
        self.write(move |conn| {
            let tx = conn
                .savepoint()
                .map_err(db_err)?;
            let uid = u.account.user_id.as_bytes().to_vec();
            let a = &u.account;
            tx.execute(
                "INSERT INTO accounts (user_id, sealed_name, generation, mode, kdf_salt, inbox, created)
                 VALUES (?1,?2,?3,?4,?5,?6,?7)",
                params![
                    uid,
                    a.sealed_name,
                    a.generation.0,
                    a.mode.code(),
                    a.kdf_salt.as_slice(),
                    a.inbox.map(|m| m.0),
                    a.created
                ],
            )
            .map_err(db_err)?;
            for k in &u.keyrings {
                tx.execute(
                    "INSERT INTO keyrings (user_id, generation, public_key, created) VALUES (?1,?2,?3,?4)",
                    params![uid, k.generation.0, k.public_key.as_slice(), k.created],
                )
                .map_err(db_err)?;
            }
            for l in &u.links {
                tx.execute(
                    "INSERT INTO keyring_links (user_id, generation, sealed_under, wrapped) VALUES (?1,?2,?3,?4)",
                    params![uid, l.generation.0, l.sealed_under.0, l.wrapped],
                )
                .map_err(db_err)?;
            }
            for s in &u.slots {
                tx.execute(
                    "INSERT INTO slots (user_id, slot_id, kind, generation, locator, kdf_m, kdf_t, kdf_p, wrapped, sealed_label, created, last_used)
                     VALUES (?1,?2,?3,?4,?5,?6,?7,?8,?9,?10,?11,?12)",
                    params![
                        uid,
                        s.slot_id.as_bytes().as_slice(),
                        s.kind.code(),
                        s.generation.0,
                        s.locator.as_ref().map(|l| l.to_vec()),
                        s.kdf.map(|k| k.memory_kib),
                        s.kdf.map(|k| k.time_cost),
                        s.kdf.map(|k| k.parallelism),
                        s.wrapped,
                        s.sealed_label,
                        s.created,
                        s.last_used
                    ],
                )
                .map_err(db_err)?;
            }
            for m in &u.mailboxes {
                tx.execute(
                    "INSERT INTO mailboxes (id, user_id, generation, sealed, lookup, uidvalidity, uidnext, highest_modseq, created)
                     VALUES (?1,?2,?3,?4,?5,?6,?7,?8,?9)",
                    params![
                        m.id.0,
                        uid,
                        m.generation.0,
                        m.sealed,
                        m.lookup.as_slice(),
                        m.uid_validity.get(),
                        m.uid_next,
                        m.highest_modseq as i64,
                        m.created
                    ],
                )
                .map_err(db_err)?;
            }
            for m in &u.messages {
                tx.execute(
                    &format!("INSERT INTO messages (user_id, {MESSAGE_COLS}) VALUES (?1,?2,?3,?4,?5,?6,?7,?8,?9,?10,?11)"),
                    params![
                        uid,
                        m.mailbox.0,
                        m.uid.get(),
                        m.modseq.get() as i64,
                        m.msg_id.as_bytes().as_slice(),
                        m.blob_id.as_bytes().as_slice(),
                        m.blob_len as i64,
                        m.seal.kind_code(),
                        m.seal.generation().0,
                        m.sealed_meta,
                        m.sealed_flags
                    ],
                )
                .map_err(db_err)?;
            }
            for e in &u.expunged {
                tx.execute(
                    "INSERT INTO expunged (mailbox_id, uid, modseq) VALUES (?1,?2,?3)",
                    params![e.mailbox.0, e.uid.get(), e.modseq.get() as i64],
                )
                .map_err(db_err)?;
            }
            tx.commit().map_err(db_err)
        })
        .await
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test(flavor = "multi_thread")]
    async fn embedded_backend_passes_the_conformance_suite() {
        let dir = tempdir();
        let store = SqliteStore::open(&dir).unwrap();
        crate::conformance::run_all(&store).await;
        let _ = fs::remove_dir_all(&dir);
    }

    /// Regression: with the bundled SQLite (STAT4) every cached statement comparing a bound
    /// parameter with an indexed column was parsed and planned again on each run.
    #[test]
    fn cached_statements_are_not_prepared_again_on_each_run() {
        let dir = tempdir();
        drop(SqliteStore::open(&dir).unwrap());
        let c = open_connection(&dir.join(DB_FILE)).unwrap();
        let sql = format!(
            "SELECT {MESSAGE_COLS} FROM messages WHERE mailbox_id = ? AND user_id = ? \
             AND uid IN (?, ?, ?) ORDER BY uid"
        );
        for round in 0..5i64 {
            let mut stmt = c.prepare_cached(&sql).unwrap();
            let rows = stmt
                .query_map(
                    params![round, vec![7u8; 32], round, round + 1, round + 2],
                    message_raw,
                )
                .unwrap()
                .count();
            assert_eq!(rows, 0);
            assert_eq!(
                stmt.get_status(rusqlite::StatementStatus::RePrepare),
                0,
                "run {round} prepared the statement again"
            );
        }
        let _ = fs::remove_dir_all(&dir);
    }

    #[tokio::test(flavor = "multi_thread")]
    async fn a_newer_schema_is_refused() {
        let dir = tempdir();
        drop(SqliteStore::open(&dir).unwrap());
        let c = Connection::open(dir.join(DB_FILE)).unwrap();
        c.pragma_update(None, "user_version", SCHEMA_VERSION + 1)
            .unwrap();
        drop(c);
        match SqliteStore::open(&dir) {
            Err(StoreError::SchemaTooNew { found, known }) => {
                assert_eq!((found, known), (SCHEMA_VERSION + 1, SCHEMA_VERSION));
            }
            other => panic!("expected SchemaTooNew, got {:?}", other.err()),
        }
        let _ = fs::remove_dir_all(&dir);
    }

    fn blob_files(dir: &Path) -> Vec<PathBuf> {
        let mut out = Vec::new();
        for shard in fs::read_dir(dir.join("blobs")).unwrap().flatten() {
            if shard.file_name() == "tmp" {
                continue;
            }
            out.extend(
                fs::read_dir(shard.path())
                    .unwrap()
                    .flatten()
                    .map(|f| f.path()),
            );
        }
        out
    }

    #[tokio::test(flavor = "multi_thread")]
    async fn small_blobs_are_rows_and_large_ones_files() {
        let dir = tempdir();
        let store = SqliteStore::open(&dir).unwrap();
        let u = UserId([3; 32]);
        let (small, edge, large) = (BlobId([1; 16]), BlobId([2; 16]), BlobId([3; 16]));
        store.put_blob(&u, &small, vec![7; 10_000]).await.unwrap();
        store
            .put_blob_streamed(
                &u,
                &edge,
                Box::new(|w| w.write_all(&vec![8; INLINE_BLOB_MAX])),
            )
            .await
            .unwrap();
        assert!(
            blob_files(&dir).is_empty(),
            "blobs up to the limit write no file"
        );
        store
            .put_blob_streamed(
                &u,
                &large,
                Box::new(|w| {
                    w.write_all(&vec![9; INLINE_BLOB_MAX])?;
                    w.write_all(&[9])
                }),
            )
            .await
            .unwrap();
        let files = blob_files(&dir);
        assert_eq!(
            files.len(),
            1,
            "one byte over the limit is a file: {files:?}"
        );
        assert_eq!(
            fs::metadata(&files[0]).unwrap().len(),
            INLINE_BLOB_MAX as u64 + 1
        );
        assert!(
            fs::read_dir(dir.join("blobs/tmp"))
                .unwrap()
                .next()
                .is_none()
        );
        assert_eq!(
            store.get_blob(&u, &edge).await.unwrap(),
            vec![8; INLINE_BLOB_MAX]
        );
        // Nothing references them: the sweep removes rows and files alike.
        assert_eq!(store.sweep_orphans(0).await.unwrap(), 3);
        assert!(blob_files(&dir).is_empty());
        for b in [small, edge, large] {
            assert!(matches!(
                store.get_blob(&u, &b).await,
                Err(StoreError::NotFound(_))
            ));
        }
        let _ = fs::remove_dir_all(&dir);
    }

    #[tokio::test(flavor = "multi_thread")]
    async fn a_schema_1_store_gains_the_blob_table_and_keeps_its_files() {
        let dir = tempdir();
        fs::create_dir_all(dir.join("blobs/tmp")).unwrap();
        let c = Connection::open(dir.join(DB_FILE)).unwrap();
        c.execute_batch(SCHEMA_V1).unwrap();
        c.pragma_update(None, "user_version", 1).unwrap();
        drop(c);
        let old = BlobId([4; 16]);
        let hex = old.to_hex();
        fs::create_dir_all(dir.join("blobs").join(&hex[..2])).unwrap();
        fs::write(
            dir.join("blobs").join(&hex[..2]).join(&hex),
            b"old sealed blob",
        )
        .unwrap();

        let store = SqliteStore::open(&dir).unwrap();
        let u = UserId([4; 32]);
        assert_eq!(store.get_blob(&u, &old).await.unwrap(), b"old sealed blob");
        store
            .put_blob(&u, &BlobId([5; 16]), vec![1; 100])
            .await
            .unwrap();
        drop(store);
        let c = Connection::open(dir.join(DB_FILE)).unwrap();
        let version: u32 = c
            .query_row("PRAGMA user_version", [], |r| r.get(0))
            .unwrap();
        assert_eq!(version, SCHEMA_VERSION);
        let rows: i64 = c
            .query_row("SELECT count(*) FROM blobs", [], |r| r.get(0))
            .unwrap();
        assert_eq!(rows, 1);
        let _ = fs::remove_dir_all(&dir);
    }

    fn tempdir() -> PathBuf {
        let d = std::env::temp_dir().join(format!("coffer-store-test-{}", rand::random::<u64>()));
        fs::create_dir_all(&d).unwrap();
        d
    }
}
