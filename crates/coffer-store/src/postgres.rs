//! The PostgreSQL backend: every row and every sealed blob in one PostgreSQL database, so
//! that several stateless Coffer nodes can serve the same users (issue 7).
//!
//! PostgreSQL sees what the embedded backend's files show and nothing more: opaque user
//! ids, counters (UIDs, UIDVALIDITY, MODSEQs, generations), padded blob lengths, creation
//! times and ciphertext.
//!
//! # Schema and migrations
//!
//! Coffer creates and migrates its own schema. `coffer_schema` holds one row with the
//! version; [`MIGRATIONS`] lists the steps, migration `n` taking version `n - 1` to `n`.
//! [`PgStore::connect`] applies the missing steps in one transaction under an advisory lock,
//! so that nodes starting together migrate once; a database whose version is above
//! [`SCHEMA_VERSION`] is refused with [`StoreError::SchemaTooNew`].
//!
//! # Concurrency between nodes
//!
//! Transactions run at READ COMMITTED. Every transaction that allocates UIDs or MODSEQs
//! locks its mailbox rows first (`UPDATE ... RETURNING` or `SELECT ... FOR UPDATE`, several
//! mailboxes always in id order), so allocation is serialised per mailbox across every
//! connection of every node. UIDVALIDITY comes from the meta row `last_uidvalidity` (four
//! big-endian bytes, as in the embedded backend), read `FOR UPDATE` and raised in the
//! transaction that creates the mailbox. Locks are always taken in the order mailboxes (by
//! id), messages, account, `last_uidvalidity`, blobs, change counter, which leaves no room
//! for deadlocks; should PostgreSQL still report one (or a serialisation failure), the
//! whole transaction is retried (up to five attempts).
//!
//! Blobs live in `blobs` (bytea, stored uncompressed: ciphertext does not compress). A
//! blob that is no longer referenced is deleted in the transaction that removed its last
//! message; an append locks the blobs it references (`FOR KEY SHARE`) so that a concurrent
//! expunge cannot delete a blob that a copy being committed still needs.
//!
//! # `data_version`
//!
//! `coffer_changes` has 256 counter rows; every write transaction that changes rows
//! (not `put_blob`) increments the row picked by the first byte of the user id, as its
//! last statement, so the increment commits atomically with the change it announces.
//! [`Store::data_version`] returns the sum of all rows: it strictly grows with every
//! committed change, on any connection of any node, and never with an uncommitted one.
//! Sharding keeps writers of different users from queueing on one hot row. A node's own
//! writes change it too (the server then re-checks once for nothing).
//!
//! # Durability
//!
//! Every acknowledged write is a committed transaction. If the server's
//! `synchronous_commit` is `off`, each session sets it to `on`; stronger settings
//! (`remote_apply`, synchronous standbys) are kept.
//!
//! # Not yet
//!
//! Connections are made without TLS (`NoTls`): PostgreSQL must be reached over a trusted
//! network or a Unix socket until a TLS connector is added. Changes are learnt by polling
//! [`Store::data_version`]; LISTEN/NOTIFY for sub-second cross-node IDLE is still to come.

use crate::{
    AccountRow, BlobWriter, FlagRow, FlagUpdate, KdfParams, KeyringLinkRow, KeyringRow, MailboxRow,
    MessageRow, NewAccount, NewMailbox, NewMessage, Result, SealRef, SlotRow, Store, StoreError,
};
use async_trait::async_trait;
use coffer_types::{
    BlobId, Generation, MailboxId, ModSeq, MsgId, SecurityMode, SlotId, SlotKind, Uid, UidValidity,
    UserId,
};
use deadpool_postgres::{Manager, ManagerConfig, Object, Pool, RecyclingMethod, Transaction};
use std::collections::{HashMap, HashSet};
use std::time::{Duration, SystemTime, UNIX_EPOCH};
use tokio_postgres::error::SqlState;
use tokio_postgres::types::ToSql;
use tokio_postgres::{NoTls, Row};

/// Migrations in order: entry `n - 1` takes the schema from version `n - 1` to `n`.
pub const MIGRATIONS: &[&str] = &[MIGRATION_1];

/// The schema version this binary writes and understands.
pub const SCHEMA_VERSION: u32 = MIGRATIONS.len() as u32;

/// Default number of pooled connections per [`PgStore`].
pub const DEFAULT_POOL_SIZE: usize = 16;

/// Key of the advisory lock held while migrating ("coffer" in ASCII).
const MIGRATION_LOCK: i64 = 0x636f_6666_6572;

/// Number of rows of `coffer_changes` (one per value of a user id's first byte).
const CHANGE_SHARDS: i64 = 256;

const MIGRATION_1: &str = r#"
CREATE TABLE meta (
    key   TEXT PRIMARY KEY,
    value BYTEA NOT NULL
);
INSERT INTO meta (key, value) VALUES ('last_uidvalidity', '\x00000000'::bytea);
CREATE TABLE coffer_changes (
    shard BIGINT PRIMARY KEY,
    n     BIGINT NOT NULL
);
INSERT INTO coffer_changes (shard, n) SELECT g, 0 FROM generate_series(0, 255) AS g;
CREATE TABLE accounts (
    user_id     BYTEA PRIMARY KEY,
    sealed_name BYTEA NOT NULL,
    generation  BIGINT NOT NULL,
    mode        BIGINT NOT NULL,
    kdf_salt    BYTEA NOT NULL,
    inbox       BIGINT,
    created     BIGINT NOT NULL
);
CREATE TABLE keyrings (
    user_id    BYTEA NOT NULL,
    generation BIGINT NOT NULL,
    public_key BYTEA NOT NULL,
    created    BIGINT NOT NULL,
    PRIMARY KEY (user_id, generation)
);
CREATE TABLE keyring_links (
    user_id      BYTEA NOT NULL,
    generation   BIGINT NOT NULL,
    sealed_under BIGINT NOT NULL,
    wrapped      BYTEA NOT NULL,
    PRIMARY KEY (user_id, generation)
);
CREATE TABLE slots (
    user_id      BYTEA NOT NULL,
    slot_id      BYTEA NOT NULL,
    kind         BIGINT NOT NULL,
    generation   BIGINT NOT NULL,
    locator      BYTEA,
    kdf_m        BIGINT,
    kdf_t        BIGINT,
    kdf_p        BIGINT,
    wrapped      BYTEA NOT NULL,
    sealed_label BYTEA,
    created      BIGINT NOT NULL,
    last_used    BIGINT,
    PRIMARY KEY (user_id, slot_id)
);
CREATE UNIQUE INDEX slots_by_locator ON slots (user_id, locator) WHERE locator IS NOT NULL;
CREATE TABLE mailboxes (
    id             BIGINT GENERATED BY DEFAULT AS IDENTITY PRIMARY KEY,
    user_id        BYTEA NOT NULL,
    generation     BIGINT NOT NULL,
    sealed         BYTEA NOT NULL,
    lookup         BYTEA NOT NULL,
    uidvalidity    BIGINT NOT NULL,
    uidnext        BIGINT NOT NULL,
    highest_modseq BIGINT NOT NULL,
    created        BIGINT NOT NULL,
    CONSTRAINT mailboxes_lookup_unique UNIQUE (user_id, lookup)
);
CREATE TABLE messages (
    mailbox_id   BIGINT NOT NULL,
    uid          BIGINT NOT NULL,
    user_id      BYTEA NOT NULL,
    modseq       BIGINT NOT NULL,
    msg_id       BYTEA NOT NULL UNIQUE,
    blob_id      BYTEA NOT NULL,
    blob_len     BIGINT NOT NULL,
    seal_kind    BIGINT NOT NULL,
    seal_gen     BIGINT NOT NULL,
    sealed_meta  BYTEA NOT NULL,
    sealed_flags BYTEA,
    PRIMARY KEY (mailbox_id, uid)
);
CREATE INDEX messages_by_blob ON messages (blob_id);
CREATE INDEX messages_by_user ON messages (user_id);
CREATE TABLE expunged (
    mailbox_id BIGINT NOT NULL,
    uid        BIGINT NOT NULL,
    modseq     BIGINT NOT NULL,
    PRIMARY KEY (mailbox_id, uid)
);
CREATE TABLE blobs (
    blob_id BYTEA PRIMARY KEY,
    user_id BYTEA NOT NULL,
    created BIGINT NOT NULL,
    data    BYTEA NOT NULL
);
ALTER TABLE blobs ALTER COLUMN data SET STORAGE EXTERNAL;
CREATE INDEX blobs_by_user ON blobs (user_id);
"#;

const ACCOUNT_COLS: &str = "user_id, sealed_name, generation, mode, kdf_salt, inbox, created";
const SLOT_COLS: &str = "user_id, slot_id, kind, generation, locator, kdf_m, kdf_t, kdf_p, wrapped, sealed_label, created, last_used";
const MAILBOX_COLS: &str =
    "id, user_id, generation, sealed, lookup, uidvalidity, uidnext, highest_modseq, created";
const MESSAGE_COLS: &str = "mailbox_id, uid, modseq, msg_id, blob_id, blob_len, seal_kind, seal_gen, sealed_meta, sealed_flags";

/// The PostgreSQL store. Cheap to clone; all clones share one connection pool.
#[derive(Clone)]
pub struct PgStore {
    pool: Pool,
    /// The connection URL without its password, for messages.
    shown_url: String,
}

/// An error inside one attempt of an operation: whether running it again may succeed.
struct Fail {
    err: StoreError,
    retry: bool,
}

type R<T> = std::result::Result<T, Fail>;

impl From<StoreError> for Fail {
    fn from(err: StoreError) -> Self {
        Fail { err, retry: false }
    }
}

impl From<tokio_postgres::Error> for Fail {
    fn from(e: tokio_postgres::Error) -> Self {
        let retry = matches!(
            e.code(),
            Some(c) if *c == SqlState::T_R_DEADLOCK_DETECTED || *c == SqlState::T_R_SERIALIZATION_FAILURE
        );
        Fail {
            err: pg_err(&e),
            retry,
        }
    }
}

/// Maps a PostgreSQL error onto the store's errors. No user content is in them: only
/// constraint names and server messages about ids.
fn pg_err(e: &tokio_postgres::Error) -> StoreError {
    let Some(db) = e.as_db_error() else {
        // No SQLSTATE: the connection broke or could not be used.
        return StoreError::Unavailable(format!("PostgreSQL: {}", with_causes(e)));
    };
    let code = db.code();
    let class = &code.code()[..2];
    if *code == SqlState::UNIQUE_VIOLATION {
        let what = match db.constraint() {
            Some("mailboxes_lookup_unique") => "a mailbox with that name exists".to_string(),
            Some("accounts_pkey") => "account exists".to_string(),
            Some("slots_by_locator") => "a key slot with that locator exists".to_string(),
            Some(c) => format!("constraint {c}"),
            None => db.message().to_string(),
        };
        return StoreError::Conflict(what);
    }
    if *code == SqlState::DISK_FULL {
        return StoreError::DiskFull("writing to PostgreSQL".into());
    }
    if *code == SqlState::DATA_CORRUPTED || *code == SqlState::INDEX_CORRUPTED {
        return StoreError::Corrupt {
            object: "PostgreSQL database".into(),
            reason: db.message().to_string(),
        };
    }
    // 08: connection exception; 53: insufficient resources; 57P: operator intervention
    // (shutdown, cannot connect now).
    if class == "08" || class == "53" || code.code().starts_with("57P") {
        return StoreError::Unavailable(format!("PostgreSQL: {db}"));
    }
    StoreError::Database(format!("PostgreSQL: {db}"))
}

/// An error's message followed by those of its causes ("error connecting to server:
/// Connection refused (os error 111)").
fn with_causes(e: &dyn std::error::Error) -> String {
    let mut out = e.to_string();
    let mut cause = e.source();
    while let Some(c) = cause {
        let text = c.to_string();
        if !out.contains(&text) {
            out.push_str(": ");
            out.push_str(&text);
        }
        cause = c.source();
    }
    out
}

fn now() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_secs() as i64)
        .unwrap_or(0)
}

fn corrupt(object: &str, reason: &str) -> StoreError {
    StoreError::Corrupt {
        object: object.into(),
        reason: reason.into(),
    }
}

fn arr<const N: usize>(bytes: Vec<u8>, what: &str) -> std::result::Result<[u8; N], StoreError> {
    <[u8; N]>::try_from(bytes.as_slice())
        .map_err(|_| corrupt(what, &format!("value is not {N} bytes")))
}

fn u32_of(v: i64, object: &str, what: &str) -> std::result::Result<u32, StoreError> {
    u32::try_from(v).map_err(|_| corrupt(object, what))
}

/// The change-counter row a user's writes increment.
fn shard_of(user: &UserId) -> i64 {
    i64::from(user.0[0]) % CHANGE_SHARDS
}

/// `url` with any password replaced by `***`, for messages. Handles URLs
/// (`postgres://user:secret@host/db?password=...`) and key/value strings
/// (`host=... password=secret`).
pub fn redact_url(url: &str) -> String {
    if let Some(scheme_end) = url.find("://") {
        let (scheme, rest) = url.split_at(scheme_end + 3);
        let authority_end = rest.find(['/', '?']).unwrap_or(rest.len());
        let (authority, tail) = rest.split_at(authority_end);
        let authority = match authority.rfind('@') {
            Some(at) => {
                let (userinfo, host) = authority.split_at(at);
                match userinfo.find(':') {
                    Some(colon) => format!("{}:***{host}", &userinfo[..colon]),
                    None => authority.to_string(),
                }
            }
            None => authority.to_string(),
        };
        let tail = match tail.find('?') {
            Some(q) => {
                let (path, query) = tail.split_at(q + 1);
                let query: Vec<String> = query
                    .split('&')
                    .map(|kv| {
                        if kv.to_ascii_lowercase().starts_with("password=") {
                            "password=***".to_string()
                        } else {
                            kv.to_string()
                        }
                    })
                    .collect();
                format!("{path}{}", query.join("&"))
            }
            None => tail.to_string(),
        };
        return format!("{scheme}{authority}{tail}");
    }
    // Key/value form: values may be single-quoted with backslash escapes.
    let mut out = String::with_capacity(url.len());
    let chars: Vec<char> = url.chars().collect();
    let mut i = 0;
    while i < chars.len() {
        if chars[i].is_whitespace() {
            out.push(chars[i]);
            i += 1;
            continue;
        }
        let start = i;
        while i < chars.len() && chars[i] != '=' && !chars[i].is_whitespace() {
            i += 1;
        }
        let key: String = chars[start..i].iter().collect();
        while i < chars.len() && chars[i].is_whitespace() {
            i += 1;
        }
        if i >= chars.len() || chars[i] != '=' {
            out.push_str(&key);
            continue;
        }
        i += 1;
        while i < chars.len() && chars[i].is_whitespace() {
            i += 1;
        }
        let vstart = i;
        if i < chars.len() && chars[i] == '\'' {
            i += 1;
            while i < chars.len() && chars[i] != '\'' {
                if chars[i] == '\\' {
                    i += 1;
                }
                i += 1;
            }
            i = (i + 1).min(chars.len());
        } else {
            while i < chars.len() && !chars[i].is_whitespace() {
                i += 1;
            }
        }
        let value: String = chars[vstart..i].iter().collect();
        if key.eq_ignore_ascii_case("password") {
            out.push_str("password=***");
        } else {
            out.push_str(&format!("{key}={value}"));
        }
    }
    out
}

// --- query helpers -------------------------------------------------------------------------

type Params<'a> = &'a [&'a (dyn ToSql + Sync)];

async fn tq(tx: &Transaction<'_>, sql: &str, p: Params<'_>) -> R<Vec<Row>> {
    let st = tx.prepare_cached(sql).await?;
    Ok(tx.query(&st, p).await?)
}

async fn tq_opt(tx: &Transaction<'_>, sql: &str, p: Params<'_>) -> R<Option<Row>> {
    let st = tx.prepare_cached(sql).await?;
    Ok(tx.query_opt(&st, p).await?)
}

async fn tx_exec(tx: &Transaction<'_>, sql: &str, p: Params<'_>) -> R<u64> {
    let st = tx.prepare_cached(sql).await?;
    Ok(tx.execute(&st, p).await?)
}

async fn cq(c: &Object, sql: &str, p: Params<'_>) -> R<Vec<Row>> {
    let st = c.prepare_cached(sql).await?;
    Ok(c.query(&st, p).await?)
}

async fn cq_opt(c: &Object, sql: &str, p: Params<'_>) -> R<Option<Row>> {
    let st = c.prepare_cached(sql).await?;
    Ok(c.query_opt(&st, p).await?)
}

async fn c_exec(c: &Object, sql: &str, p: Params<'_>) -> R<u64> {
    let st = c.prepare_cached(sql).await?;
    Ok(c.execute(&st, p).await?)
}

/// Announces a committed change to every node polling [`Store::data_version`]. Called as
/// the last statement of a write transaction (the lock order puts the counter last).
async fn bump(tx: &Transaction<'_>, shard: i64) -> R<()> {
    tx_exec(
        tx,
        "UPDATE coffer_changes SET n = n + 1 WHERE shard = $1",
        &[&shard],
    )
    .await?;
    Ok(())
}

// --- row decoding ---------------------------------------------------------------------------

fn account_from(r: &Row) -> R<AccountRow> {
    let user_id = UserId(arr(r.try_get(0)?, "account")?);
    let object = format!("account {user_id}");
    let inbox: Option<i64> = r.try_get(5)?;
    Ok(AccountRow {
        user_id,
        sealed_name: r.try_get(1)?,
        generation: Generation(u32_of(r.try_get(2)?, &object, "generation")?),
        mode: u8::try_from(r.try_get::<_, i64>(3)?)
            .ok()
            .and_then(SecurityMode::from_code)
            .ok_or_else(|| corrupt(&object, "unknown security mode"))?,
        kdf_salt: arr(r.try_get(4)?, &object)?,
        inbox: inbox.map(MailboxId),
        created: r.try_get(6)?,
    })
}

fn slot_from(r: &Row) -> R<SlotRow> {
    let slot_id = SlotId(arr(r.try_get(1)?, "slot")?);
    let object = format!("slot {slot_id}");
    let m: Option<i64> = r.try_get(5)?;
    let t: Option<i64> = r.try_get(6)?;
    let p: Option<i64> = r.try_get(7)?;
    let kdf = match (m, t, p) {
        (Some(m), Some(t), Some(p)) => Some(KdfParams {
            memory_kib: u32_of(m, &object, "kdf memory")?,
            time_cost: u32_of(t, &object, "kdf time")?,
            parallelism: u32_of(p, &object, "kdf lanes")?,
        }),
        (None, None, None) => None,
        _ => return Err(corrupt(&object, "partial kdf parameters").into()),
    };
    let locator: Option<Vec<u8>> = r.try_get(4)?;
    Ok(SlotRow {
        user_id: UserId(arr(r.try_get(0)?, &object)?),
        slot_id,
        kind: u8::try_from(r.try_get::<_, i64>(2)?)
            .ok()
            .and_then(SlotKind::from_code)
            .ok_or_else(|| corrupt(&object, "unknown slot kind"))?,
        generation: Generation(u32_of(r.try_get(3)?, &object, "generation")?),
        locator: locator.map(|l| arr(l, &object)).transpose()?,
        kdf,
        wrapped: r.try_get(8)?,
        sealed_label: r.try_get(9)?,
        created: r.try_get(10)?,
        last_used: r.try_get(11)?,
    })
}

fn mailbox_from(r: &Row) -> R<MailboxRow> {
    let id: i64 = r.try_get(0)?;
    let object = format!("mailbox {id}");
    Ok(MailboxRow {
        id: MailboxId(id),
        user_id: UserId(arr(r.try_get(1)?, &object)?),
        generation: Generation(u32_of(r.try_get(2)?, &object, "generation")?),
        sealed: r.try_get(3)?,
        lookup: arr(r.try_get(4)?, &object)?,
        uid_validity: u32::try_from(r.try_get::<_, i64>(5)?)
            .ok()
            .and_then(UidValidity::new)
            .ok_or_else(|| corrupt(&object, "uidvalidity"))?,
        uid_next: u32_of(r.try_get(6)?, &object, "uidnext")?,
        highest_modseq: u64::try_from(r.try_get::<_, i64>(7)?)
            .map_err(|_| corrupt(&object, "modseq"))?,
        created: r.try_get(8)?,
    })
}

fn uid_of(v: i64, object: &str) -> std::result::Result<Uid, StoreError> {
    u32::try_from(v)
        .ok()
        .and_then(Uid::new)
        .ok_or_else(|| corrupt(object, "uid"))
}

fn modseq_of(v: i64, object: &str) -> std::result::Result<ModSeq, StoreError> {
    u64::try_from(v)
        .ok()
        .and_then(ModSeq::new)
        .ok_or_else(|| corrupt(object, "modseq"))
}

fn seal_of(kind: i64, generation: i64, object: &str) -> std::result::Result<SealRef, StoreError> {
    u8::try_from(kind)
        .ok()
        .zip(u32::try_from(generation).ok())
        .and_then(|(k, g)| SealRef::from_parts(k, Generation(g)))
        .ok_or_else(|| corrupt(object, "seal kind"))
}

fn message_from(r: &Row) -> R<MessageRow> {
    let mailbox: i64 = r.try_get(0)?;
    let uid: i64 = r.try_get(1)?;
    let object = format!("message {mailbox}/{uid}");
    Ok(MessageRow {
        mailbox: MailboxId(mailbox),
        uid: uid_of(uid, &object)?,
        modseq: modseq_of(r.try_get(2)?, &object)?,
        msg_id: MsgId(arr(r.try_get(3)?, &object)?),
        blob_id: BlobId(arr(r.try_get(4)?, &object)?),
        blob_len: u64::try_from(r.try_get::<_, i64>(5)?)
            .map_err(|_| corrupt(&object, "blob length"))?,
        seal: seal_of(r.try_get(6)?, r.try_get(7)?, &object)?,
        sealed_meta: r.try_get(8)?,
        sealed_flags: r.try_get(9)?,
    })
}

// --- shared transaction steps ---------------------------------------------------------------

async fn insert_slot(tx: &Transaction<'_>, s: &SlotRow) -> R<()> {
    let kind = i64::from(s.kind.code());
    let generation = i64::from(s.generation.0);
    let locator = s.locator.as_ref().map(|l| l.as_slice());
    let m = s.kdf.map(|k| i64::from(k.memory_kib));
    let t = s.kdf.map(|k| i64::from(k.time_cost));
    let p = s.kdf.map(|k| i64::from(k.parallelism));
    tx_exec(
        tx,
        &format!("INSERT INTO slots ({SLOT_COLS}) VALUES ($1,$2,$3,$4,$5,$6,$7,$8,$9,$10,$11,$12)"),
        &[
            &s.user_id.as_bytes().as_slice(),
            &s.slot_id.as_bytes().as_slice(),
            &kind,
            &generation,
            &locator,
            &m,
            &t,
            &p,
            &s.wrapped,
            &s.sealed_label,
            &s.created,
            &s.last_used,
        ],
    )
    .await?;
    Ok(())
}

/// Allocates a UIDVALIDITY larger than every earlier one of the installation, under the
/// lock of the `last_uidvalidity` meta row (RFC 9051 §2.3.1.1).
async fn next_uidvalidity(tx: &Transaction<'_>) -> R<UidValidity> {
    let select = "SELECT value FROM meta WHERE key = 'last_uidvalidity' FOR UPDATE";
    let mut row = tq_opt(tx, select, &[]).await?;
    if row.is_none() {
        tx_exec(
            tx,
            "INSERT INTO meta (key, value) VALUES ('last_uidvalidity', '\\x00000000'::bytea)
             ON CONFLICT (key) DO NOTHING",
            &[],
        )
        .await?;
        row = tq_opt(tx, select, &[]).await?;
    }
    let last = row
        .map(|r| r.try_get::<_, Vec<u8>>(0))
        .transpose()?
        .and_then(|v| <[u8; 4]>::try_from(v.as_slice()).ok())
        .map(u32::from_be_bytes)
        .unwrap_or(0);
    let candidate = (now().max(0) as u64).min(u32::MAX as u64 - 1) as u32;
    let next = candidate.max(last.saturating_add(1)).max(1);
    tx_exec(
        tx,
        "UPDATE meta SET value = $1 WHERE key = 'last_uidvalidity'",
        &[&next.to_be_bytes().to_vec()],
    )
    .await?;
    Ok(UidValidity::new(next)
        .ok_or_else(|| StoreError::Database("uidvalidity exhausted".into()))?)
}

async fn insert_mailbox(tx: &Transaction<'_>, user: &UserId, m: &NewMailbox) -> R<MailboxRow> {
    let uv = next_uidvalidity(tx).await?;
    let created = now();
    let u = user.as_bytes().as_slice();
    let row = tq(
        tx,
        "INSERT INTO mailboxes (user_id, generation, sealed, lookup, uidvalidity, uidnext, highest_modseq, created)
         VALUES ($1, $2, $3, $4, $5, 1, 1, $6) RETURNING id",
        &[
            &u,
            &i64::from(m.generation.0),
            &m.sealed,
            &m.lookup.as_slice(),
            &i64::from(uv.get()),
            &created,
        ],
    )
    .await?;
    let id = MailboxId(
        row.first()
            .ok_or_else(|| StoreError::Database("insert returned no id".into()))?
            .try_get(0)?,
    );
    if m.is_inbox {
        tx_exec(
            tx,
            "UPDATE accounts SET inbox = $1 WHERE user_id = $2",
            &[&id.0, &u],
        )
        .await?;
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

/// Locks a mailbox of `user` and returns (uidnext, highest_modseq).
async fn lock_mailbox(tx: &Transaction<'_>, user: &UserId, mailbox: MailboxId) -> R<(u32, u64)> {
    let row = tq_opt(
        tx,
        "SELECT uidnext, highest_modseq FROM mailboxes WHERE id = $1 AND user_id = $2 FOR UPDATE",
        &[&mailbox.0, &user.as_bytes().as_slice()],
    )
    .await?
    .ok_or_else(|| StoreError::NotFound(format!("mailbox {mailbox}")))?;
    let object = format!("mailbox {mailbox}");
    let next = u32_of(row.try_get(0)?, &object, "uidnext")?;
    let hms = u64::try_from(row.try_get::<_, i64>(1)?).map_err(|_| corrupt(&object, "modseq"))?;
    Ok((next, hms))
}

/// Deletes those of `candidates` that no message references any more. The blobs are
/// locked first; the delete then runs with a fresh snapshot (READ COMMITTED), so a copy
/// committed while we waited for the lock keeps its blob.
async fn drop_unreferenced(tx: &Transaction<'_>, candidates: Vec<Vec<u8>>) -> R<()> {
    let mut seen = HashSet::new();
    let mut ids: Vec<Vec<u8>> = candidates
        .into_iter()
        .filter(|c| seen.insert(c.clone()))
        .collect();
    if ids.is_empty() {
        return Ok(());
    }
    ids.sort();
    tq(
        tx,
        "SELECT blob_id FROM blobs WHERE blob_id = ANY($1) ORDER BY blob_id FOR UPDATE",
        &[&ids],
    )
    .await?;
    tx_exec(
        tx,
        "DELETE FROM blobs b WHERE b.blob_id = ANY($1)
         AND NOT EXISTS (SELECT 1 FROM messages m WHERE m.blob_id = b.blob_id)",
        &[&ids],
    )
    .await?;
    Ok(())
}

impl PgStore {
    /// Connects to PostgreSQL at `url` (a `postgres://` URL or a key/value string) with a
    /// pool of [`DEFAULT_POOL_SIZE`] connections, creating or migrating the schema.
    pub async fn connect(url: &str) -> Result<PgStore> {
        Self::connect_with_pool_size(url, DEFAULT_POOL_SIZE).await
    }

    /// Like [`PgStore::connect`], with at most `pool_size` connections.
    pub async fn connect_with_pool_size(url: &str, pool_size: usize) -> Result<PgStore> {
        let shown_url = redact_url(url);
        let mut config: tokio_postgres::Config = url.parse().map_err(|e| {
            StoreError::Database(format!("invalid PostgreSQL URL {shown_url}: {e}"))
        })?;
        if config.get_connect_timeout().is_none() {
            config.connect_timeout(Duration::from_secs(10));
        }
        let unreachable = |e: tokio_postgres::Error| {
            StoreError::Unavailable(format!(
                "cannot connect to PostgreSQL at {shown_url}: {}",
                with_causes(&e)
            ))
        };
        // One connection of our own first: it tells whether the server can be reached at
        // all, and migrates before the pool hands out connections.
        let (mut client, connection) = config.connect(NoTls).await.map_err(unreachable)?;
        let conn_task = tokio::spawn(async move {
            let _ = connection.await;
        });
        let outcome = async {
            migrate(&mut client).await?;
            let sync: String = client
                .query_one("SELECT current_setting('synchronous_commit')", &[])
                .await
                .map_err(|e| pg_err(&e))?
                .get(0);
            Ok::<_, StoreError>(sync)
        }
        .await;
        drop(client);
        let _ = conn_task.await;
        let sync = outcome.map_err(|e| match e {
            StoreError::Unavailable(m) => {
                StoreError::Unavailable(format!("PostgreSQL at {shown_url}: {m}"))
            }
            other => other,
        })?;
        if sync == "off" {
            let options = match config.get_options() {
                Some(o) => format!("{o} -c synchronous_commit=on"),
                None => "-c synchronous_commit=on".to_string(),
            };
            config.options(&options);
        }
        let manager = Manager::from_config(
            config,
            NoTls,
            ManagerConfig {
                recycling_method: RecyclingMethod::Fast,
            },
        );
        let pool = Pool::builder(manager)
            .max_size(pool_size.max(1))
            .runtime(deadpool_postgres::Runtime::Tokio1)
            .wait_timeout(Some(Duration::from_secs(30)))
            .create_timeout(Some(Duration::from_secs(10)))
            .recycle_timeout(Some(Duration::from_secs(5)))
            .build()
            .map_err(|e| StoreError::Database(format!("PostgreSQL pool for {shown_url}: {e}")))?;
        Ok(PgStore { pool, shown_url })
    }

    /// The connection URL without its password.
    pub fn url(&self) -> &str {
        &self.shown_url
    }

    async fn client(&self) -> R<Object> {
        self.pool.get().await.map_err(|e| {
            let err = match e {
                deadpool_postgres::PoolError::Backend(e) => match pg_err(&e) {
                    StoreError::Unavailable(m) | StoreError::Database(m) => {
                        StoreError::Unavailable(format!(
                            "PostgreSQL at {} is unavailable: {m}",
                            self.shown_url
                        ))
                    }
                    other => other,
                },
                other => StoreError::Unavailable(format!(
                    "PostgreSQL at {} is unavailable: {other}",
                    self.shown_url
                )),
            };
            Fail { err, retry: false }
        })
    }

    /// Runs one operation, again (up to five attempts) if PostgreSQL aborted it because of
    /// a deadlock or serialisation failure.
    async fn run<T, F, Fut>(&self, mut attempt: F) -> Result<T>
    where
        F: FnMut() -> Fut,
        Fut: std::future::Future<Output = R<T>>,
    {
        let mut tries = 0;
        loop {
            match attempt().await {
                Ok(v) => return Ok(v),
                Err(f) if f.retry && tries < 4 => {
                    tries += 1;
                    tokio::time::sleep(Duration::from_millis(5 << tries)).await;
                }
                Err(f) => return Err(f.err),
            }
        }
    }

    // --- one attempt of each write ------------------------------------------------------

    async fn create_account_once(&self, new: &NewAccount) -> R<Vec<MailboxRow>> {
        let mut c = self.client().await?;
        let tx = c.transaction().await?;
        let a = &new.account;
        let u = a.user_id.as_bytes().as_slice();
        let inserted = tx_exec(
            &tx,
            &format!(
                "INSERT INTO accounts ({ACCOUNT_COLS}) VALUES ($1,$2,$3,$4,$5,NULL,$6)
                 ON CONFLICT (user_id) DO NOTHING"
            ),
            &[
                &u,
                &a.sealed_name,
                &i64::from(a.generation.0),
                &i64::from(a.mode.code()),
                &a.kdf_salt.as_slice(),
                &a.created,
            ],
        )
        .await?;
        if inserted == 0 {
            return Err(StoreError::Conflict("account exists".into()).into());
        }
        let k = &new.keyring;
        tx_exec(
            &tx,
            "INSERT INTO keyrings (user_id, generation, public_key, created) VALUES ($1,$2,$3,$4)",
            &[
                &u,
                &i64::from(k.generation.0),
                &k.public_key.as_slice(),
                &k.created,
            ],
        )
        .await?;
        for s in &new.slots {
            insert_slot(&tx, s).await?;
        }
        let mut rows = Vec::new();
        for m in &new.mailboxes {
            rows.push(insert_mailbox(&tx, &a.user_id, m).await?);
        }
        bump(&tx, shard_of(&a.user_id)).await?;
        tx.commit().await?;
        Ok(rows)
    }

    async fn delete_account_once(&self, user: &UserId) -> R<bool> {
        let mut c = self.client().await?;
        let tx = c.transaction().await?;
        let u = user.as_bytes().as_slice();
        // Lock order: mailboxes (by id) first, as every other writer does; then the
        // account, which stops new mailboxes (create_mailbox holds it FOR KEY SHARE); then
        // the mailboxes again, to hold any created before we got the account.
        let lock_boxes = "SELECT id FROM mailboxes WHERE user_id = $1 ORDER BY id FOR UPDATE";
        tq(&tx, lock_boxes, &[&u]).await?;
        tq(
            &tx,
            "SELECT 1 FROM accounts WHERE user_id = $1 FOR UPDATE",
            &[&u],
        )
        .await?;
        tq(&tx, lock_boxes, &[&u]).await?;
        let blobs: Vec<Vec<u8>> = tq(
            &tx,
            "SELECT DISTINCT blob_id FROM messages WHERE user_id = $1",
            &[&u],
        )
        .await?
        .iter()
        .map(|r| r.try_get(0))
        .collect::<std::result::Result<_, _>>()?;
        tx_exec(
            &tx,
            "DELETE FROM expunged WHERE mailbox_id IN (SELECT id FROM mailboxes WHERE user_id = $1)",
            &[&u],
        )
        .await?;
        for sql in [
            "DELETE FROM messages WHERE user_id = $1",
            "DELETE FROM mailboxes WHERE user_id = $1",
            "DELETE FROM slots WHERE user_id = $1",
            "DELETE FROM keyring_links WHERE user_id = $1",
            "DELETE FROM keyrings WHERE user_id = $1",
        ] {
            tx_exec(&tx, sql, &[&u]).await?;
        }
        let n = tx_exec(&tx, "DELETE FROM accounts WHERE user_id = $1", &[&u]).await?;
        // Every blob the user stored goes, referenced or left over by a crash.
        tx_exec(
            &tx,
            "DELETE FROM blobs WHERE user_id = $1 OR blob_id = ANY($2)",
            &[&u, &blobs],
        )
        .await?;
        if n > 0 {
            bump(&tx, shard_of(user)).await?;
        }
        tx.commit().await?;
        Ok(n > 0)
    }

    async fn set_mode_once(
        &self,
        user: &UserId,
        mode: SecurityMode,
        escrow: &Option<SlotRow>,
    ) -> R<()> {
        let mut c = self.client().await?;
        let tx = c.transaction().await?;
        let u = user.as_bytes().as_slice();
        let n = tx_exec(
            &tx,
            "UPDATE accounts SET mode = $1 WHERE user_id = $2",
            &[&i64::from(mode.code()), &u],
        )
        .await?;
        if n == 0 {
            return Err(StoreError::NotFound(format!("account {user}")).into());
        }
        tx_exec(
            &tx,
            "DELETE FROM slots WHERE user_id = $1 AND kind = $2",
            &[&u, &i64::from(SlotKind::Escrow.code())],
        )
        .await?;
        if let Some(s) = escrow {
            insert_slot(&tx, s).await?;
        }
        bump(&tx, shard_of(user)).await?;
        tx.commit().await?;
        Ok(())
    }

    async fn reset_keyring_once(
        &self,
        user: &UserId,
        keyring: &KeyringRow,
        slots: &[SlotRow],
        mailboxes: &[NewMailbox],
    ) -> R<Vec<MailboxRow>> {
        let mut c = self.client().await?;
        let tx = c.transaction().await?;
        let u = user.as_bytes().as_slice();
        let generation = i64::from(keyring.generation.0);
        let n = tx_exec(
            &tx,
            "UPDATE accounts SET generation = $1, inbox = NULL WHERE user_id = $2 AND generation < $1",
            &[&generation, &u],
        )
        .await?;
        if n == 0 {
            return Err(StoreError::Conflict(format!(
                "account {user} changed generation concurrently or is gone"
            ))
            .into());
        }
        // Escrow slots of older generations would let the operator open only old mail; a
        // new one for the new generation comes with `slots` in low mode.
        tx_exec(
            &tx,
            "DELETE FROM slots WHERE user_id = $1 AND kind = $2",
            &[&u, &i64::from(SlotKind::Escrow.code())],
        )
        .await?;
        tx_exec(
            &tx,
            "INSERT INTO keyrings (user_id, generation, public_key, created) VALUES ($1,$2,$3,$4)",
            &[
                &u,
                &generation,
                &keyring.public_key.as_slice(),
                &keyring.created,
            ],
        )
        .await?;
        for s in slots {
            insert_slot(&tx, s).await?;
        }
        let mut rows = Vec::new();
        for m in mailboxes {
            rows.push(insert_mailbox(&tx, user, m).await?);
        }
        bump(&tx, shard_of(user)).await?;
        tx.commit().await?;
        Ok(rows)
    }

    async fn put_link_once(&self, link: &KeyringLinkRow) -> R<()> {
        let mut c = self.client().await?;
        let tx = c.transaction().await?;
        let u = link.user_id.as_bytes().as_slice();
        let generation = i64::from(link.generation.0);
        tx_exec(
            &tx,
            "INSERT INTO keyring_links (user_id, generation, sealed_under, wrapped) VALUES ($1,$2,$3,$4)
             ON CONFLICT (user_id, generation) DO UPDATE SET sealed_under = excluded.sealed_under, wrapped = excluded.wrapped",
            &[&u, &generation, &i64::from(link.sealed_under.0), &link.wrapped],
        )
        .await?;
        tx_exec(
            &tx,
            "DELETE FROM slots WHERE user_id = $1 AND generation = $2",
            &[&u, &generation],
        )
        .await?;
        bump(&tx, shard_of(&link.user_id)).await?;
        tx.commit().await?;
        Ok(())
    }

    async fn replace_slots_once(&self, user: &UserId, add: &[SlotRow], remove: &[SlotId]) -> R<()> {
        let mut c = self.client().await?;
        let tx = c.transaction().await?;
        let u = user.as_bytes().as_slice();
        for id in remove {
            tx_exec(
                &tx,
                "DELETE FROM slots WHERE user_id = $1 AND slot_id = $2",
                &[&u, &id.as_bytes().as_slice()],
            )
            .await?;
        }
        for s in add {
            insert_slot(&tx, s).await?;
        }
        bump(&tx, shard_of(user)).await?;
        tx.commit().await?;
        Ok(())
    }

    async fn touch_slot_once(&self, user: &UserId, slot: &SlotId, when: i64) -> R<()> {
        let mut c = self.client().await?;
        let tx = c.transaction().await?;
        let n = tx_exec(
            &tx,
            "UPDATE slots SET last_used = $1 WHERE user_id = $2 AND slot_id = $3",
            &[
                &when,
                &user.as_bytes().as_slice(),
                &slot.as_bytes().as_slice(),
            ],
        )
        .await?;
        if n > 0 {
            bump(&tx, shard_of(user)).await?;
        }
        tx.commit().await?;
        Ok(())
    }

    async fn create_mailbox_once(&self, user: &UserId, new: &NewMailbox) -> R<MailboxRow> {
        let mut c = self.client().await?;
        let tx = c.transaction().await?;
        // KEY SHARE: the account cannot be deleted meanwhile, yet setting its INBOX
        // pointer (a non-key update) from another transaction does not wait on us.
        let exists = tq_opt(
            &tx,
            "SELECT 1 FROM accounts WHERE user_id = $1 FOR KEY SHARE",
            &[&user.as_bytes().as_slice()],
        )
        .await?
        .is_some();
        if !exists {
            return Err(StoreError::NotFound(format!("account {user}")).into());
        }
        let row = insert_mailbox(&tx, user, new).await?;
        bump(&tx, shard_of(user)).await?;
        tx.commit().await?;
        Ok(row)
    }

    async fn update_mailbox_once(
        &self,
        user: &UserId,
        id: MailboxId,
        generation: Generation,
        sealed: &[u8],
        lookup: &[u8; 32],
    ) -> R<()> {
        let mut c = self.client().await?;
        let tx = c.transaction().await?;
        let n = tx_exec(
            &tx,
            "UPDATE mailboxes SET generation = $1, sealed = $2, lookup = $3 WHERE user_id = $4 AND id = $5",
            &[
                &i64::from(generation.0),
                &sealed,
                &lookup.as_slice(),
                &user.as_bytes().as_slice(),
                &id.0,
            ],
        )
        .await?;
        if n == 0 {
            return Err(StoreError::NotFound(format!("mailbox {id}")).into());
        }
        bump(&tx, shard_of(user)).await?;
        tx.commit().await?;
        Ok(())
    }

    async fn delete_mailbox_once(&self, user: &UserId, id: MailboxId) -> R<()> {
        let mut c = self.client().await?;
        let tx = c.transaction().await?;
        let u = user.as_bytes().as_slice();
        let n = tx_exec(
            &tx,
            "DELETE FROM mailboxes WHERE id = $1 AND user_id = $2",
            &[&id.0, &u],
        )
        .await?;
        if n == 0 {
            return Err(StoreError::NotFound(format!("mailbox {id}")).into());
        }
        let blobs: Vec<Vec<u8>> = tq(
            &tx,
            "DELETE FROM messages WHERE mailbox_id = $1 RETURNING blob_id",
            &[&id.0],
        )
        .await?
        .iter()
        .map(|r| r.try_get(0))
        .collect::<std::result::Result<_, _>>()?;
        tx_exec(&tx, "DELETE FROM expunged WHERE mailbox_id = $1", &[&id.0]).await?;
        tx_exec(
            &tx,
            "UPDATE accounts SET inbox = NULL WHERE user_id = $1 AND inbox = $2",
            &[&u, &id.0],
        )
        .await?;
        drop_unreferenced(&tx, blobs).await?;
        bump(&tx, shard_of(user)).await?;
        tx.commit().await?;
        Ok(())
    }

    async fn append_once(
        &self,
        user: &UserId,
        mailbox: MailboxId,
        messages: &[NewMessage],
    ) -> R<(Vec<Uid>, ModSeq)> {
        let mut c = self.client().await?;
        let tx = c.transaction().await?;
        let u = user.as_bytes().as_slice();
        let count = messages.len() as i64;
        // Allocation and lock in one statement: the row stays locked until commit, so
        // appends to this mailbox from every node queue here.
        let row = tq_opt(
            &tx,
            "UPDATE mailboxes SET uidnext = uidnext + $3, highest_modseq = highest_modseq + 1
             WHERE id = $1 AND user_id = $2 AND uidnext + $3 <= 4294967295
             RETURNING uidnext - $3, highest_modseq",
            &[&mailbox.0, &u, &count],
        )
        .await?;
        let Some(row) = row else {
            // Either no such mailbox of this user, or its UIDs are used up.
            lock_mailbox(&tx, user, mailbox).await?;
            return Err(
                StoreError::Conflict(format!("mailbox {mailbox} has used every UID")).into(),
            );
        };
        let object = format!("mailbox {mailbox}");
        let first: i64 = row.try_get(0)?;
        let modseq: i64 = row.try_get(1)?;
        let modseq = modseq_of(modseq, &object)?;
        let mut uids = Vec::with_capacity(messages.len());
        if !messages.is_empty() {
            let mut blob_ids: Vec<&[u8]> = messages
                .iter()
                .map(|m| m.blob_id.as_bytes().as_slice())
                .collect();
            blob_ids.sort();
            blob_ids.dedup();
            // Keeps a concurrent expunge from deleting a blob this append references.
            tq(
                &tx,
                "SELECT 1 FROM blobs WHERE blob_id = ANY($1) ORDER BY blob_id FOR KEY SHARE",
                &[&blob_ids],
            )
            .await?;
            let uid_list: Vec<i64> = (0..count).map(|i| first + i).collect();
            let msg_ids: Vec<&[u8]> = messages
                .iter()
                .map(|m| m.msg_id.as_bytes().as_slice())
                .collect();
            let blobs: Vec<&[u8]> = messages
                .iter()
                .map(|m| m.blob_id.as_bytes().as_slice())
                .collect();
            let lens: Vec<i64> = messages.iter().map(|m| m.blob_len as i64).collect();
            let kinds: Vec<i64> = messages
                .iter()
                .map(|m| i64::from(m.seal.kind_code()))
                .collect();
            let gens: Vec<i64> = messages
                .iter()
                .map(|m| i64::from(m.seal.generation().0))
                .collect();
            let metas: Vec<&[u8]> = messages.iter().map(|m| m.sealed_meta.as_slice()).collect();
            let flags: Vec<Option<&[u8]>> =
                messages.iter().map(|m| m.sealed_flags.as_deref()).collect();
            tx_exec(
                &tx,
                &format!(
                    "INSERT INTO messages (user_id, {MESSAGE_COLS})
                     SELECT $1, $2, t.uid, $3, t.msg_id, t.blob_id, t.blob_len, t.kind, t.gen, t.meta, t.flags
                     FROM UNNEST($4::bigint[], $5::bytea[], $6::bytea[], $7::bigint[], $8::bigint[], $9::bigint[], $10::bytea[], $11::bytea[])
                          AS t(uid, msg_id, blob_id, blob_len, kind, gen, meta, flags)"
                ),
                &[
                    &u,
                    &mailbox.0,
                    &(modseq.get() as i64),
                    &uid_list,
                    &msg_ids,
                    &blobs,
                    &lens,
                    &kinds,
                    &gens,
                    &metas,
                    &flags,
                ],
            )
            .await?;
            for uid in uid_list {
                uids.push(uid_of(uid, &object)?);
            }
        }
        bump(&tx, shard_of(user)).await?;
        tx.commit().await?;
        Ok((uids, modseq))
    }

    async fn set_flags_once(
        &self,
        user: &UserId,
        mailbox: MailboxId,
        changes: &[(Uid, Vec<u8>)],
        unchanged_since: Option<u64>,
    ) -> R<FlagUpdate> {
        let mut c = self.client().await?;
        let tx = c.transaction().await?;
        let (_, hms) = lock_mailbox(&tx, user, mailbox).await?;
        let modseq = hms + 1;
        let wanted: Vec<i64> = changes.iter().map(|(u, _)| i64::from(u.get())).collect();
        let mut current: HashMap<i64, u64> = HashMap::new();
        for r in tq(
            &tx,
            "SELECT uid, modseq FROM messages WHERE mailbox_id = $1 AND uid = ANY($2)",
            &[&mailbox.0, &wanted],
        )
        .await?
        {
            current.insert(r.try_get(0)?, r.try_get::<_, i64>(1)? as u64);
        }
        // Walk the changes in order, as the embedded backend does one UPDATE at a time.
        let mut out = FlagUpdate::default();
        let mut last: HashMap<i64, &[u8]> = HashMap::new();
        for (uid, flags) in changes {
            let key = i64::from(uid.get());
            let Some(cur) = current.get_mut(&key) else {
                continue;
            };
            if unchanged_since.is_some_and(|since| *cur > since) {
                out.skipped.push(*uid);
                continue;
            }
            *cur = modseq;
            last.insert(key, flags.as_slice());
            out.changed.push(*uid);
        }
        if !out.changed.is_empty() {
            let (uids, flags): (Vec<i64>, Vec<&[u8]>) = last.into_iter().unzip();
            tx_exec(
                &tx,
                "UPDATE messages m SET sealed_flags = t.flags, modseq = $2
                 FROM UNNEST($3::bigint[], $4::bytea[]) AS t(uid, flags)
                 WHERE m.mailbox_id = $1 AND m.uid = t.uid",
                &[&mailbox.0, &(modseq as i64), &uids, &flags],
            )
            .await?;
            tx_exec(
                &tx,
                "UPDATE mailboxes SET highest_modseq = $1 WHERE id = $2",
                &[&(modseq as i64), &mailbox.0],
            )
            .await?;
            out.modseq = ModSeq::new(modseq);
            bump(&tx, shard_of(user)).await?;
        }
        tx.commit().await?;
        Ok(out)
    }

    async fn reseal_once(
        &self,
        user: &UserId,
        msg: &MsgId,
        seal: SealRef,
        sealed_meta: &[u8],
        empty_flags: &[u8],
    ) -> R<bool> {
        let mut c = self.client().await?;
        let tx = c.transaction().await?;
        let n = tx_exec(
            &tx,
            "UPDATE messages SET seal_kind = $1, seal_gen = $2, sealed_meta = $3,
                    sealed_flags = COALESCE(sealed_flags, $4)
             WHERE msg_id = $5 AND user_id = $6 AND seal_kind = 2",
            &[
                &i64::from(seal.kind_code()),
                &i64::from(seal.generation().0),
                &sealed_meta,
                &empty_flags,
                &msg.as_bytes().as_slice(),
                &user.as_bytes().as_slice(),
            ],
        )
        .await?;
        if n > 0 {
            bump(&tx, shard_of(user)).await?;
        }
        tx.commit().await?;
        Ok(n > 0)
    }

    async fn replace_meta_once(
        &self,
        user: &UserId,
        rows: &[(MsgId, SealRef, Vec<u8>)],
    ) -> R<usize> {
        let mut c = self.client().await?;
        let tx = c.transaction().await?;
        let mut n = 0;
        for (msg, seal, meta) in rows {
            n += tx_exec(
                &tx,
                "UPDATE messages SET sealed_meta = $1
                 WHERE msg_id = $2 AND user_id = $3 AND seal_kind = $4 AND seal_gen = $5",
                &[
                    &meta.as_slice(),
                    &msg.as_bytes().as_slice(),
                    &user.as_bytes().as_slice(),
                    &i64::from(seal.kind_code()),
                    &i64::from(seal.generation().0),
                ],
            )
            .await? as usize;
        }
        tx.commit().await?;
        Ok(n)
    }

    async fn expunge_once(
        &self,
        user: &UserId,
        mailbox: MailboxId,
        uids: &[Uid],
    ) -> R<(Vec<Uid>, Option<ModSeq>)> {
        let mut c = self.client().await?;
        let tx = c.transaction().await?;
        let (_, hms) = lock_mailbox(&tx, user, mailbox).await?;
        let modseq = hms + 1;
        let wanted: Vec<i64> = uids.iter().map(|u| i64::from(u.get())).collect();
        let mut gone = HashSet::new();
        let mut blobs = Vec::new();
        for r in tq(
            &tx,
            "DELETE FROM messages WHERE mailbox_id = $1 AND uid = ANY($2) RETURNING uid, blob_id",
            &[&mailbox.0, &wanted],
        )
        .await?
        {
            gone.insert(r.try_get::<_, i64>(0)?);
            blobs.push(r.try_get::<_, Vec<u8>>(1)?);
        }
        if gone.is_empty() {
            tx.commit().await?;
            return Ok((Vec::new(), None));
        }
        // In input order, each once, as the embedded backend reports them.
        let mut removed = Vec::with_capacity(gone.len());
        for uid in uids {
            if gone.remove(&i64::from(uid.get())) {
                removed.push(*uid);
            }
        }
        let logged: Vec<i64> = removed.iter().map(|u| i64::from(u.get())).collect();
        tx_exec(
            &tx,
            "INSERT INTO expunged (mailbox_id, uid, modseq) SELECT $1, u, $2 FROM UNNEST($3::bigint[]) AS u
             ON CONFLICT (mailbox_id, uid) DO UPDATE SET modseq = excluded.modseq",
            &[&mailbox.0, &(modseq as i64), &logged],
        )
        .await?;
        tx_exec(
            &tx,
            "UPDATE mailboxes SET highest_modseq = $1 WHERE id = $2",
            &[&(modseq as i64), &mailbox.0],
        )
        .await?;
        drop_unreferenced(&tx, blobs).await?;
        bump(&tx, shard_of(user)).await?;
        tx.commit().await?;
        Ok((removed, ModSeq::new(modseq)))
    }

    async fn move_once(
        &self,
        user: &UserId,
        from: MailboxId,
        uids: &[Uid],
        to: MailboxId,
    ) -> R<Vec<(Uid, Uid)>> {
        let mut c = self.client().await?;
        let tx = c.transaction().await?;
        let ids = vec![from.0, to.0];
        let mut counters: HashMap<i64, (u32, u64)> = HashMap::new();
        for r in tq(
            &tx,
            "SELECT id, uidnext, highest_modseq FROM mailboxes WHERE user_id = $1 AND id = ANY($2)
             ORDER BY id FOR UPDATE",
            &[&user.as_bytes().as_slice(), &ids],
        )
        .await?
        {
            let id: i64 = r.try_get(0)?;
            let object = format!("mailbox {id}");
            let next = u32_of(r.try_get(1)?, &object, "uidnext")?;
            let hms =
                u64::try_from(r.try_get::<_, i64>(2)?).map_err(|_| corrupt(&object, "modseq"))?;
            counters.insert(id, (next, hms));
        }
        let (_, from_hms) = *counters
            .get(&from.0)
            .ok_or_else(|| StoreError::NotFound(format!("mailbox {from}")))?;
        let (mut next, to_hms) = *counters
            .get(&to.0)
            .ok_or_else(|| StoreError::NotFound(format!("mailbox {to}")))?;
        let (from_modseq, to_modseq) = (from_hms + 1, to_hms + 1);
        let wanted: Vec<i64> = uids.iter().map(|u| i64::from(u.get())).collect();
        // Current UID in `from` -> UID the row had when we started.
        let mut present: HashMap<u32, u32> = HashMap::new();
        for r in tq(
            &tx,
            "SELECT uid FROM messages WHERE mailbox_id = $1 AND uid = ANY($2)",
            &[&from.0, &wanted],
        )
        .await?
        {
            let uid = u32::try_from(r.try_get::<_, i64>(0)?)
                .map_err(|_| corrupt(&format!("mailbox {from}"), "uid"))?;
            present.insert(uid, uid);
        }
        let mut pairs = Vec::new();
        let mut finals: HashMap<u32, u32> = HashMap::new();
        for uid in uids {
            if next == u32::MAX {
                return Err(
                    StoreError::Conflict(format!("mailbox {to} has used every UID")).into(),
                );
            }
            if let Some(orig) = present.remove(&uid.get()) {
                pairs.push((*uid, Uid::new(next).expect("uidnext >= 1")));
                finals.insert(orig, next);
                if from == to {
                    present.insert(next, orig);
                }
                next += 1;
            }
        }
        if !pairs.is_empty() {
            let (olds, news): (Vec<i64>, Vec<i64>) = finals
                .iter()
                .map(|(o, n)| (i64::from(*o), i64::from(*n)))
                .unzip();
            tx_exec(
                &tx,
                "UPDATE messages m SET mailbox_id = $1, uid = t.new, modseq = $2
                 FROM UNNEST($4::bigint[], $5::bigint[]) AS t(old, new)
                 WHERE m.mailbox_id = $3 AND m.uid = t.old",
                &[&to.0, &(to_modseq as i64), &from.0, &olds, &news],
            )
            .await?;
            let mut logged: Vec<i64> = pairs.iter().map(|(o, _)| i64::from(o.get())).collect();
            logged.sort_unstable();
            logged.dedup();
            tx_exec(
                &tx,
                "INSERT INTO expunged (mailbox_id, uid, modseq) SELECT $1, u, $2 FROM UNNEST($3::bigint[]) AS u
                 ON CONFLICT (mailbox_id, uid) DO UPDATE SET modseq = excluded.modseq",
                &[&from.0, &(from_modseq as i64), &logged],
            )
            .await?;
            tx_exec(
                &tx,
                "UPDATE mailboxes SET highest_modseq = $1 WHERE id = $2",
                &[&(from_modseq as i64), &from.0],
            )
            .await?;
            tx_exec(
                &tx,
                "UPDATE mailboxes SET uidnext = $1, highest_modseq = $2 WHERE id = $3",
                &[&i64::from(next), &(to_modseq as i64), &to.0],
            )
            .await?;
            bump(&tx, shard_of(user)).await?;
        }
        tx.commit().await?;
        Ok(pairs)
    }

    async fn set_meta_once(&self, key: &str, value: &[u8]) -> R<()> {
        let mut c = self.client().await?;
        let tx = c.transaction().await?;
        tx_exec(
            &tx,
            "INSERT INTO meta (key, value) VALUES ($1, $2)
             ON CONFLICT (key) DO UPDATE SET value = excluded.value",
            &[&key, &value],
        )
        .await?;
        bump(&tx, 0).await?;
        tx.commit().await?;
        Ok(())
    }

    async fn put_blob_once(&self, user: &UserId, blob: &BlobId, data: &[u8]) -> R<()> {
        let c = self.client().await?;
        // Overwriting a blob is allowed (as a rename over an existing file is), but never
        // one that belongs to another user.
        let n = c_exec(
            &c,
            "INSERT INTO blobs (blob_id, user_id, created, data)
             VALUES ($1, $2, extract(epoch from now())::bigint, $3)
             ON CONFLICT (blob_id) DO UPDATE SET data = excluded.data, created = excluded.created
             WHERE blobs.user_id = excluded.user_id",
            &[
                &blob.as_bytes().as_slice(),
                &user.as_bytes().as_slice(),
                &data,
            ],
        )
        .await?;
        if n == 0 {
            return Err(
                StoreError::Conflict(format!("blob {blob} belongs to another user")).into(),
            );
        }
        Ok(())
    }

    async fn sweep_once(&self, min_age_secs: u64) -> R<usize> {
        let mut c = self.client().await?;
        let tx = c.transaction().await?;
        let age = i64::try_from(min_age_secs).unwrap_or(i64::MAX);
        // Blobs an append is committing right now are locked by it: skip them.
        let candidates: Vec<Vec<u8>> = tq(
            &tx,
            "SELECT b.blob_id FROM blobs b
             WHERE b.created <= extract(epoch from now())::bigint - $1
             AND NOT EXISTS (SELECT 1 FROM messages m WHERE m.blob_id = b.blob_id)
             ORDER BY b.blob_id FOR UPDATE SKIP LOCKED",
            &[&age],
        )
        .await?
        .iter()
        .map(|r| r.try_get(0))
        .collect::<std::result::Result<_, _>>()?;
        if candidates.is_empty() {
            tx.commit().await?;
            return Ok(0);
        }
        let n = tx_exec(
            &tx,
            "DELETE FROM blobs b WHERE b.blob_id = ANY($1)
             AND NOT EXISTS (SELECT 1 FROM messages m WHERE m.blob_id = b.blob_id)",
            &[&candidates],
        )
        .await?;
        tx.commit().await?;
        Ok(n as usize)
    }

    async fn check_once(&self) -> R<Vec<String>> {
        let c = self.client().await?;
        let mut problems = Vec::new();
        for r in cq(
            &c,
            "SELECT m.mailbox_id, m.uid, m.blob_id, m.blob_len, octet_length(b.data)::bigint,
                    b.user_id IS NOT NULL AND b.user_id <> m.user_id
             FROM messages m LEFT JOIN blobs b ON b.blob_id = m.blob_id
             WHERE b.blob_id IS NULL OR octet_length(b.data) <> m.blob_len OR b.user_id <> m.user_id
             ORDER BY m.mailbox_id, m.uid",
            &[],
        )
        .await?
        {
            let mbox: i64 = r.try_get(0)?;
            let uid: i64 = r.try_get(1)?;
            let blob: Vec<u8> = r.try_get(2)?;
            let len: i64 = r.try_get(3)?;
            let actual: Option<i64> = r.try_get(4)?;
            let foreign: Option<bool> = r.try_get(5)?;
            let hex = coffer_types::hex(&blob);
            match actual {
                None => problems.push(format!("message {mbox}/{uid}: blob {hex} is missing")),
                Some(_) if foreign == Some(true) => problems.push(format!(
                    "message {mbox}/{uid}: blob {hex} belongs to another user"
                )),
                Some(a) => problems.push(format!(
                    "message {mbox}/{uid}: blob {hex} is {a} bytes, expected {len}"
                )),
            }
        }
        let bad: i64 = cq(
            &c,
            "SELECT count(*) FROM messages m JOIN mailboxes b ON b.id = m.mailbox_id
             WHERE m.uid >= b.uidnext OR m.modseq > b.highest_modseq OR m.user_id <> b.user_id",
            &[],
        )
        .await?[0]
            .try_get(0)?;
        if bad > 0 {
            problems.push(format!(
                "{bad} messages have a UID or MODSEQ beyond their mailbox's counters"
            ));
        }
        let orphans: i64 = cq(
            &c,
            "SELECT count(*) FROM messages m LEFT JOIN mailboxes b ON b.id = m.mailbox_id WHERE b.id IS NULL",
            &[],
        )
        .await?[0]
            .try_get(0)?;
        if orphans > 0 {
            problems.push(format!("{orphans} messages belong to no mailbox"));
        }
        Ok(problems)
    }
}

/// Creates or migrates the schema, under an advisory lock held by the transaction.
async fn migrate(client: &mut tokio_postgres::Client) -> Result<()> {
    let e = |e: tokio_postgres::Error| pg_err(&e);
    let tx = client.transaction().await.map_err(e)?;
    tx.execute("SELECT pg_advisory_xact_lock($1)", &[&MIGRATION_LOCK])
        .await
        .map_err(e)?;
    tx.batch_execute(
        "CREATE TABLE IF NOT EXISTS coffer_schema (
             only_row BOOLEAN PRIMARY KEY DEFAULT TRUE CHECK (only_row),
             version  BIGINT NOT NULL
         )",
    )
    .await
    .map_err(e)?;
    let found: i64 = tx
        .query_opt("SELECT version FROM coffer_schema", &[])
        .await
        .map_err(e)?
        .map(|r| r.get(0))
        .unwrap_or(0);
    let found = u32::try_from(found).map_err(|_| StoreError::Corrupt {
        object: "coffer_schema".into(),
        reason: format!("version {found}"),
    })?;
    if found > SCHEMA_VERSION {
        return Err(StoreError::SchemaTooNew {
            found,
            known: SCHEMA_VERSION,
        });
    }
    for (i, step) in MIGRATIONS.iter().enumerate().skip(found as usize) {
        tx.batch_execute(step).await.map_err(e)?;
        let version = i as i64 + 1;
        tx.execute(
            "INSERT INTO coffer_schema (only_row, version) VALUES (TRUE, $1)
             ON CONFLICT (only_row) DO UPDATE SET version = excluded.version",
            &[&version],
        )
        .await
        .map_err(e)?;
    }
    tx.commit().await.map_err(e)
}

#[async_trait]
impl Store for PgStore {
    async fn get_meta(&self, key: &str) -> Result<Option<Vec<u8>>> {
        self.run(|| async {
            let c = self.client().await?;
            let row = cq_opt(&c, "SELECT value FROM meta WHERE key = $1", &[&key]).await?;
            Ok(row.map(|r| r.try_get(0)).transpose()?)
        })
        .await
    }

    async fn set_meta(&self, key: &str, value: &[u8]) -> Result<()> {
        self.run(|| self.set_meta_once(key, value)).await
    }

    async fn create_account(&self, new: NewAccount) -> Result<Vec<MailboxRow>> {
        self.run(|| self.create_account_once(&new)).await
    }

    async fn get_account(&self, user: &UserId) -> Result<Option<AccountRow>> {
        self.run(|| async {
            let c = self.client().await?;
            let row = cq_opt(
                &c,
                &format!("SELECT {ACCOUNT_COLS} FROM accounts WHERE user_id = $1"),
                &[&user.as_bytes().as_slice()],
            )
            .await?;
            row.as_ref().map(account_from).transpose()
        })
        .await
    }

    async fn list_accounts(&self) -> Result<Vec<AccountRow>> {
        self.run(|| async {
            let c = self.client().await?;
            cq(
                &c,
                &format!("SELECT {ACCOUNT_COLS} FROM accounts ORDER BY created, user_id"),
                &[],
            )
            .await?
            .iter()
            .map(account_from)
            .collect()
        })
        .await
    }

    async fn delete_account(&self, user: &UserId) -> Result<bool> {
        self.run(|| self.delete_account_once(user)).await
    }

    async fn set_mode(
        &self,
        user: &UserId,
        mode: SecurityMode,
        escrow: Option<SlotRow>,
    ) -> Result<()> {
        self.run(|| self.set_mode_once(user, mode, &escrow)).await
    }

    async fn reset_keyring(
        &self,
        user: &UserId,
        keyring: KeyringRow,
        slots: Vec<SlotRow>,
        mailboxes: Vec<NewMailbox>,
    ) -> Result<Vec<MailboxRow>> {
        self.run(|| self.reset_keyring_once(user, &keyring, &slots, &mailboxes))
            .await
    }

    async fn list_keyrings(&self, user: &UserId) -> Result<Vec<KeyringRow>> {
        self.run(|| async {
            let c = self.client().await?;
            cq(
                &c,
                "SELECT generation, public_key, created FROM keyrings WHERE user_id = $1 ORDER BY generation",
                &[&user.as_bytes().as_slice()],
            )
            .await?
            .iter()
            .map(|r| {
                Ok(KeyringRow {
                    user_id: *user,
                    generation: Generation(u32_of(r.try_get(0)?, "keyring", "generation")?),
                    public_key: arr(r.try_get(1)?, "keyring")?,
                    created: r.try_get(2)?,
                })
            })
            .collect()
        })
        .await
    }

    async fn list_links(&self, user: &UserId) -> Result<Vec<KeyringLinkRow>> {
        self.run(|| async {
            let c = self.client().await?;
            cq(
                &c,
                "SELECT generation, sealed_under, wrapped FROM keyring_links WHERE user_id = $1 ORDER BY generation",
                &[&user.as_bytes().as_slice()],
            )
            .await?
            .iter()
            .map(|r| {
                Ok(KeyringLinkRow {
                    user_id: *user,
                    generation: Generation(u32_of(r.try_get(0)?, "keyring link", "generation")?),
                    sealed_under: Generation(u32_of(
                        r.try_get(1)?,
                        "keyring link",
                        "generation",
                    )?),
                    wrapped: r.try_get(2)?,
                })
            })
            .collect()
        })
        .await
    }

    async fn put_link(&self, link: KeyringLinkRow) -> Result<()> {
        self.run(|| self.put_link_once(&link)).await
    }

    async fn find_slot(&self, user: &UserId, locator: &[u8; 32]) -> Result<Option<SlotRow>> {
        self.run(|| async {
            let c = self.client().await?;
            let row = cq_opt(
                &c,
                &format!("SELECT {SLOT_COLS} FROM slots WHERE user_id = $1 AND locator = $2"),
                &[&user.as_bytes().as_slice(), &locator.as_slice()],
            )
            .await?;
            row.as_ref().map(slot_from).transpose()
        })
        .await
    }

    async fn list_slots(&self, user: &UserId) -> Result<Vec<SlotRow>> {
        self.run(|| async {
            let c = self.client().await?;
            cq(
                &c,
                &format!(
                    "SELECT {SLOT_COLS} FROM slots WHERE user_id = $1 ORDER BY created, slot_id"
                ),
                &[&user.as_bytes().as_slice()],
            )
            .await?
            .iter()
            .map(slot_from)
            .collect()
        })
        .await
    }

    async fn replace_slots(
        &self,
        user: &UserId,
        add: Vec<SlotRow>,
        remove: Vec<SlotId>,
    ) -> Result<()> {
        self.run(|| self.replace_slots_once(user, &add, &remove))
            .await
    }

    async fn touch_slot(&self, user: &UserId, slot: &SlotId, when: i64) -> Result<()> {
        self.run(|| self.touch_slot_once(user, slot, when)).await
    }

    async fn list_mailboxes(&self, user: &UserId) -> Result<Vec<MailboxRow>> {
        self.run(|| async {
            let c = self.client().await?;
            cq(
                &c,
                &format!("SELECT {MAILBOX_COLS} FROM mailboxes WHERE user_id = $1 ORDER BY id"),
                &[&user.as_bytes().as_slice()],
            )
            .await?
            .iter()
            .map(mailbox_from)
            .collect()
        })
        .await
    }

    async fn get_mailbox(&self, user: &UserId, id: MailboxId) -> Result<Option<MailboxRow>> {
        self.run(|| async {
            let c = self.client().await?;
            let row = cq_opt(
                &c,
                &format!("SELECT {MAILBOX_COLS} FROM mailboxes WHERE user_id = $1 AND id = $2"),
                &[&user.as_bytes().as_slice(), &id.0],
            )
            .await?;
            row.as_ref().map(mailbox_from).transpose()
        })
        .await
    }

    async fn find_mailbox(&self, user: &UserId, lookup: &[u8; 32]) -> Result<Option<MailboxRow>> {
        self.run(|| async {
            let c = self.client().await?;
            let row = cq_opt(
                &c,
                &format!("SELECT {MAILBOX_COLS} FROM mailboxes WHERE user_id = $1 AND lookup = $2"),
                &[&user.as_bytes().as_slice(), &lookup.as_slice()],
            )
            .await?;
            row.as_ref().map(mailbox_from).transpose()
        })
        .await
    }

    async fn create_mailbox(&self, user: &UserId, new: NewMailbox) -> Result<MailboxRow> {
        self.run(|| self.create_mailbox_once(user, &new)).await
    }

    async fn update_mailbox(
        &self,
        user: &UserId,
        id: MailboxId,
        generation: Generation,
        sealed: Vec<u8>,
        lookup: [u8; 32],
    ) -> Result<()> {
        self.run(|| self.update_mailbox_once(user, id, generation, &sealed, &lookup))
            .await
    }

    async fn delete_mailbox(&self, user: &UserId, id: MailboxId) -> Result<()> {
        self.run(|| self.delete_mailbox_once(user, id)).await
    }

    async fn append(
        &self,
        user: &UserId,
        mailbox: MailboxId,
        messages: Vec<NewMessage>,
    ) -> Result<(Vec<Uid>, ModSeq)> {
        self.run(|| self.append_once(user, mailbox, &messages))
            .await
    }

    async fn stored_bytes(&self, user: &UserId) -> Result<u64> {
        self.run(|| async {
            let c = self.client().await?;
            let v: i64 = cq(
                &c,
                "SELECT COALESCE(SUM(blob_len), 0)::bigint FROM messages WHERE user_id = $1",
                &[&user.as_bytes().as_slice()],
            )
            .await?[0]
                .try_get(0)?;
            Ok(v.max(0) as u64)
        })
        .await
    }

    async fn list_messages(&self, user: &UserId, mailbox: MailboxId) -> Result<Vec<MessageRow>> {
        self.run(|| async {
            let c = self.client().await?;
            cq(
                &c,
                &format!(
                    "SELECT {MESSAGE_COLS} FROM messages WHERE mailbox_id = $1 AND user_id = $2 ORDER BY uid"
                ),
                &[&mailbox.0, &user.as_bytes().as_slice()],
            )
            .await?
            .iter()
            .map(message_from)
            .collect()
        })
        .await
    }

    async fn get_messages(
        &self,
        user: &UserId,
        mailbox: MailboxId,
        uids: Vec<Uid>,
    ) -> Result<Vec<MessageRow>> {
        let mut wanted: Vec<i64> = uids.iter().map(|u| i64::from(u.get())).collect();
        wanted.sort_unstable();
        wanted.dedup();
        self.run(|| async {
            let c = self.client().await?;
            cq(
                &c,
                &format!(
                    "SELECT {MESSAGE_COLS} FROM messages
                     WHERE mailbox_id = $1 AND user_id = $2 AND uid = ANY($3) ORDER BY uid"
                ),
                &[&mailbox.0, &user.as_bytes().as_slice(), &wanted],
            )
            .await?
            .iter()
            .map(message_from)
            .collect()
        })
        .await
    }

    async fn list_flags(&self, user: &UserId, mailbox: MailboxId) -> Result<Vec<FlagRow>> {
        self.run(|| async {
            let c = self.client().await?;
            cq(
                &c,
                "SELECT uid, modseq, msg_id, seal_kind, seal_gen, sealed_flags FROM messages
                 WHERE mailbox_id = $1 AND user_id = $2 ORDER BY uid",
                &[&mailbox.0, &user.as_bytes().as_slice()],
            )
            .await?
            .iter()
            .map(|r| {
                let uid: i64 = r.try_get(0)?;
                let object = format!("message {mailbox}/{uid}");
                Ok(FlagRow {
                    uid: uid_of(uid, &object)?,
                    modseq: modseq_of(r.try_get(1)?, &object)?,
                    msg_id: MsgId(arr(r.try_get(2)?, &object)?),
                    seal: seal_of(r.try_get(3)?, r.try_get(4)?, &object)?,
                    sealed_flags: r.try_get(5)?,
                })
            })
            .collect()
        })
        .await
    }

    async fn get_message(
        &self,
        user: &UserId,
        mailbox: MailboxId,
        uid: Uid,
    ) -> Result<Option<MessageRow>> {
        self.run(|| async {
            let c = self.client().await?;
            let row = cq_opt(
                &c,
                &format!(
                    "SELECT {MESSAGE_COLS} FROM messages WHERE mailbox_id = $1 AND uid = $2 AND user_id = $3"
                ),
                &[&mailbox.0, &i64::from(uid.get()), &user.as_bytes().as_slice()],
            )
            .await?;
            row.as_ref().map(message_from).transpose()
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
        self.run(|| self.set_flags_once(user, mailbox, &changes, unchanged_since))
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
        self.run(|| self.reseal_once(user, msg, seal, &sealed_meta, &empty_flags))
            .await
    }

    async fn replace_sealed_meta(
        &self,
        user: &UserId,
        rows: Vec<(MsgId, SealRef, Vec<u8>)>,
    ) -> Result<usize> {
        self.run(|| self.replace_meta_once(user, &rows)).await
    }

    async fn expunge(
        &self,
        user: &UserId,
        mailbox: MailboxId,
        uids: Vec<Uid>,
    ) -> Result<(Vec<Uid>, Option<ModSeq>)> {
        self.run(|| self.expunge_once(user, mailbox, &uids)).await
    }

    async fn move_messages(
        &self,
        user: &UserId,
        from: MailboxId,
        uids: Vec<Uid>,
        to: MailboxId,
    ) -> Result<Vec<(Uid, Uid)>> {
        self.run(|| self.move_once(user, from, &uids, to)).await
    }

    async fn expunged_since(
        &self,
        user: &UserId,
        mailbox: MailboxId,
        since: u64,
    ) -> Result<Vec<Uid>> {
        let since = i64::try_from(since).unwrap_or(i64::MAX);
        self.run(|| async {
            let c = self.client().await?;
            let rows = cq(
                &c,
                "SELECT e.uid FROM expunged e JOIN mailboxes m ON m.id = e.mailbox_id
                 WHERE e.mailbox_id = $1 AND m.user_id = $2 AND e.modseq > $3 ORDER BY e.uid",
                &[&mailbox.0, &user.as_bytes().as_slice(), &since],
            )
            .await?;
            let mut out = Vec::with_capacity(rows.len());
            for r in &rows {
                if let Some(u) = u32::try_from(r.try_get::<_, i64>(0)?)
                    .ok()
                    .and_then(Uid::new)
                {
                    out.push(u);
                }
            }
            Ok(out)
        })
        .await
    }

    async fn put_blob(&self, user: &UserId, blob: &BlobId, data: Vec<u8>) -> Result<()> {
        self.run(|| self.put_blob_once(user, blob, &data)).await
    }

    async fn put_blob_streamed(
        &self,
        user: &UserId,
        blob: &BlobId,
        write: BlobWriter,
    ) -> Result<u64> {
        // Sealing is CPU work: it runs off the async threads.
        let data = tokio::task::spawn_blocking(move || {
            let mut data = Vec::new();
            write(&mut data).map(|_| data)
        })
        .await
        .map_err(|e| StoreError::Unavailable(format!("storage task failed: {e}")))?
        .map_err(|e| StoreError::io("sealing a blob", e))?;
        let len = data.len() as u64;
        self.put_blob(user, blob, data).await?;
        Ok(len)
    }

    async fn get_blob(&self, user: &UserId, blob: &BlobId) -> Result<Vec<u8>> {
        self.run(|| async {
            let c = self.client().await?;
            let row = cq_opt(
                &c,
                "SELECT data FROM blobs WHERE blob_id = $1 AND user_id = $2",
                &[&blob.as_bytes().as_slice(), &user.as_bytes().as_slice()],
            )
            .await?
            .ok_or_else(|| StoreError::NotFound(format!("blob {blob}")))?;
            Ok(row.try_get(0)?)
        })
        .await
    }

    async fn data_version(&self) -> Result<u64> {
        self.run(|| async {
            let c = self.client().await?;
            let v: i64 = cq(
                &c,
                "SELECT COALESCE(SUM(n), 0)::bigint FROM coffer_changes",
                &[],
            )
            .await?[0]
                .try_get(0)?;
            Ok(v as u64)
        })
        .await
    }

    async fn check(&self) -> Result<Vec<String>> {
        self.run(|| self.check_once()).await
    }

    async fn sweep_orphans(&self, min_age_secs: u64) -> Result<usize> {
        self.run(|| self.sweep_once(min_age_secs)).await
    }
}

// --- raw export and import (`coffer migrate`) ------------------------------------------------

impl PgStore {
    /// Every meta key/value pair, as stored.
    pub async fn export_meta(&self) -> Result<Vec<(String, Vec<u8>)>> {
        self.run(|| async {
            let c = self.client().await?;
            let rows = cq(&c, "SELECT key, value FROM meta ORDER BY key", &[]).await?;
            let mut out = Vec::new();
            for r in rows {
                out.push((r.try_get(0)?, r.try_get(1)?));
            }
            Ok(out)
        })
        .await
    }

    /// The expunge records of every mailbox of `user`, as stored.
    pub async fn export_expunged(&self, user: &UserId) -> Result<Vec<crate::ExpungedRow>> {
        self.run(|| async {
            let c = self.client().await?;
            let rows = cq(
                &c,
                "SELECT e.mailbox_id, e.uid, e.modseq FROM expunged e
                 JOIN mailboxes m ON m.id = e.mailbox_id
                 WHERE m.user_id = $1 ORDER BY e.mailbox_id, e.uid",
                &[&user.as_bytes().as_slice()],
            )
            .await?;
            let mut out = Vec::new();
            for r in rows {
                let mailbox: i64 = r.try_get(0)?;
                let object = format!("expunge record {mailbox}");
                out.push(crate::ExpungedRow {
                    mailbox: MailboxId(mailbox),
                    uid: uid_of(r.try_get(1)?, &object)?,
                    modseq: modseq_of(r.try_get(2)?, &object)?,
                });
            }
            Ok(out)
        })
        .await
    }

    /// Inserts every row of one user exactly as given (ids, UIDVALIDITY, UIDNEXT and
    /// MODSEQs included), in one transaction, and raises the mailbox id sequence and
    /// `last_uidvalidity` past what was copied. Blobs are stored separately with
    /// [`Store::put_blob`]. Fails with a conflict if any row exists.
    pub async fn import_user(&self, u: &crate::UserExport) -> Result<()> {
        self.run(|| async {
            let mut c = self.client().await?;
            let tx = c.transaction().await?;
            let uid = u.account.user_id.as_bytes().as_slice();
            let a = &u.account;
            tx_exec(
                &tx,
                &format!("INSERT INTO accounts ({ACCOUNT_COLS}) VALUES ($1,$2,$3,$4,$5,$6,$7)"),
                &[
                    &uid,
                    &a.sealed_name,
                    &i64::from(a.generation.0),
                    &i64::from(a.mode.code()),
                    &a.kdf_salt.as_slice(),
                    &a.inbox.map(|m| m.0),
                    &a.created,
                ],
            )
            .await?;
            for k in &u.keyrings {
                tx_exec(
                    &tx,
                    "INSERT INTO keyrings (user_id, generation, public_key, created) VALUES ($1,$2,$3,$4)",
                    &[&uid, &i64::from(k.generation.0), &k.public_key.as_slice(), &k.created],
                )
                .await?;
            }
            for l in &u.links {
                tx_exec(
                    &tx,
                    "INSERT INTO keyring_links (user_id, generation, sealed_under, wrapped) VALUES ($1,$2,$3,$4)",
                    &[
                        &uid,
                        &i64::from(l.generation.0),
                        &i64::from(l.sealed_under.0),
                        &l.wrapped,
                    ],
                )
                .await?;
            }
            for s in &u.slots {
                insert_slot(&tx, s).await?;
            }
            let mut max_uv = 0u32;
            for m in &u.mailboxes {
                max_uv = max_uv.max(m.uid_validity.get());
                tx_exec(
                    &tx,
                    &format!("INSERT INTO mailboxes ({MAILBOX_COLS}) VALUES ($1,$2,$3,$4,$5,$6,$7,$8,$9)"),
                    &[
                        &m.id.0,
                        &uid,
                        &i64::from(m.generation.0),
                        &m.sealed,
                        &m.lookup.as_slice(),
                        &i64::from(m.uid_validity.get()),
                        &i64::from(m.uid_next),
                        &(m.highest_modseq as i64),
                        &m.created,
                    ],
                )
                .await?;
            }
            for m in &u.messages {
                tx_exec(
                    &tx,
                    &format!("INSERT INTO messages (user_id, {MESSAGE_COLS}) VALUES ($1,$2,$3,$4,$5,$6,$7,$8,$9,$10,$11)"),
                    &[
                        &uid,
                        &m.mailbox.0,
                        &i64::from(m.uid.get()),
                        &(m.modseq.get() as i64),
                        &m.msg_id.as_bytes().as_slice(),
                        &m.blob_id.as_bytes().as_slice(),
                        &(m.blob_len as i64),
                        &i64::from(m.seal.kind_code()),
                        &i64::from(m.seal.generation().0),
                        &m.sealed_meta,
                        &m.sealed_flags,
                    ],
                )
                .await?;
            }
            for e in &u.expunged {
                tx_exec(
                    &tx,
                    "INSERT INTO expunged (mailbox_id, uid, modseq) VALUES ($1,$2,$3)",
                    &[&e.mailbox.0, &i64::from(e.uid.get()), &(e.modseq.get() as i64)],
                )
                .await?;
            }
            // New mailboxes must get ids above every copied one.
            tx_exec(
                &tx,
                "SELECT setval(pg_get_serial_sequence('mailboxes', 'id'),
                        GREATEST((SELECT max(id) FROM mailboxes), 1))",
                &[],
            )
            .await?;
            bump(&tx, shard_of(&u.account.user_id)).await?;
            tx.commit().await?;
            Ok(())
        })
        .await
    }
}

#[cfg(test)]
mod tests {
    use super::redact_url;

    #[test]
    fn passwords_are_hidden_in_urls() {
        assert_eq!(
            redact_url("postgres://coffer:s3cret@db.example:5432/mail"),
            "postgres://coffer:***@db.example:5432/mail"
        );
        assert_eq!(
            redact_url("postgresql://coffer@db/mail?sslmode=require&password=x&a=b"),
            "postgresql://coffer@db/mail?sslmode=require&password=***&a=b"
        );
        assert_eq!(
            redact_url("postgres://127.0.0.1/postgres"),
            "postgres://127.0.0.1/postgres"
        );
        assert_eq!(
            redact_url("host=db user=coffer password='a b\\'c' dbname=mail"),
            "host=db user=coffer password=*** dbname=mail"
        );
        assert_eq!(
            redact_url("host=db password = plain port=5432"),
            "host=db password=*** port=5432"
        );
    }
}
