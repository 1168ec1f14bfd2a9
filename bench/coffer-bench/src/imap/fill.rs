//! Fills a mailbox through the libraries before the server starts: APPEND over IMAP
//! would take far longer than the measurements themselves.
//!
//! Each message is sealed exactly as `Mail::append` seals it (body to the keyring's public
//! key, metadata and flags under the index key, flags sealed even when empty). The blobs
//! are written by the store's own `put_blob` (fsync'd, many at once), and the rows go in
//! with the store's batch `append`, `BATCH` messages per transaction. Every message of
//! one batch therefore shares one MODSEQ, where single appends would each have their own;
//! nothing measured depends on that. The server reads all of it back (FETCH FLAGS,
//! ENVELOPE and BODY[] are checked), so a sealing mistake here fails the run.

use crate::WORDS;
use crate::store::BoxError;
use coffer_mail::{MessageMeta, codec};
use coffer_store::sqlite::SqliteStore;
use coffer_store::{NewMessage, SealRef, Store};
use coffer_types::{BlobId, Flag, MsgId};
use coffer_vault::{KdfParams, Pepper, Place, Purpose, Vault, VaultConfig};
use rand::{Rng, SeedableRng};
use std::path::Path;
use std::sync::Arc;
use std::time::{Duration, Instant};
use tokio::task::JoinSet;

/// Messages per store transaction.
const BATCH: usize = 1000;
/// Blob writes in flight at once.
const BLOB_WRITES: usize = 32;
/// INTERNALDATE and Date: of message 0; message i is i minutes later.
const FIRST_DATE: i64 = 1_767_225_600; // 2026-01-01 00:00:00 UTC

/// Message `i` (0-based, UID i + 1) is unseen when `i % UNSEEN_EVERY == 0`, seen otherwise.
pub const UNSEEN_EVERY: usize = 10;
/// Smallest and largest message size.
pub const MIN_SIZE: usize = 1024;
pub const MAX_SIZE: usize = 2047;

/// The RFC 5322 message with index `i`: always the same bytes for the same `i`, between
/// MIN_SIZE and MAX_SIZE bytes, with a From, To, Subject, Date and Message-ID.
pub fn message(i: usize) -> Vec<u8> {
    let mut rng = rand::rngs::StdRng::seed_from_u64(i as u64 ^ 0x00c0_ffee);
    let size = rng.gen_range(MIN_SIZE..=MAX_SIZE);
    let pick = |rng: &mut rand::rngs::StdRng| WORDS[rng.gen_range(0..WORDS.len())];
    let subject = format!(
        "{} {} {} #{i}",
        pick(&mut rng),
        pick(&mut rng),
        pick(&mut rng)
    );
    let mut out = format!(
        "From: Sender {s} <sender{s}@bench.invalid>\r\nTo: Bench <bench@bench.invalid>\r\n\
         Subject: {subject}\r\nDate: {date}\r\nMessage-ID: <{i}.coffer-bench@bench.invalid>\r\n\
         MIME-Version: 1.0\r\nContent-Type: text/plain; charset=utf-8\r\n\r\n",
        s = i % 97,
        date = rfc5322_date(FIRST_DATE + 60 * i as i64),
    )
    .into_bytes();
    let mut line = String::with_capacity(80);
    while out.len() < size {
        line.clear();
        while line.len() < 70 {
            if !line.is_empty() {
                line.push(' ');
            }
            line.push_str(pick(&mut rng));
        }
        line.push_str("\r\n");
        out.extend_from_slice(line.as_bytes());
    }
    out.truncate(size - 2);
    out.extend_from_slice(b"\r\n");
    out
}

fn rfc5322_date(secs: i64) -> String {
    const DAYS: [&str; 7] = ["Thu", "Fri", "Sat", "Sun", "Mon", "Tue", "Wed"];
    const MONTHS: [&str; 12] = [
        "Jan", "Feb", "Mar", "Apr", "May", "Jun", "Jul", "Aug", "Sep", "Oct", "Nov", "Dec",
    ];
    let days = secs.div_euclid(86_400);
    let s = secs.rem_euclid(86_400);
    let (y, m, d) = crate::machine::civil_from_days(days);
    format!(
        "{}, {d:02} {} {y:04} {:02}:{:02}:{:02} +0000",
        DAYS[days.rem_euclid(7) as usize],
        MONTHS[m as usize - 1],
        s / 3600,
        s / 60 % 60,
        s % 60
    )
}

pub struct Filled {
    pub took: Duration,
    /// Plaintext bytes of all messages.
    pub bytes: u64,
    pub unseen: usize,
}

/// Appends `count` messages to `user`'s INBOX in the installation at `data_dir`. The
/// server must not be running. `kdf` must be the cost of the server's config: a login
/// with another cost would re-wrap the user's slot at that cost.
pub async fn fill(
    data_dir: &Path,
    pepper: &Path,
    kdf: KdfParams,
    user: &str,
    password: &str,
    count: usize,
) -> Result<Filled, BoxError> {
    let store = SqliteStore::open(data_dir)?;
    let vault = Arc::new(Vault::new(
        Arc::new(store.clone()),
        Arc::new(Pepper::load(pepper)?),
        VaultConfig {
            kdf,
            argon2_concurrency: 1,
            grace: Duration::from_secs(60),
            recovery_key: None,
        },
    ));
    let user_id = vault.user_id(user)?;
    for slot in store.list_slots(&user_id).await? {
        if slot.kdf.is_some_and(|k| k != kdf) {
            return Err(format!(
                "a key slot of {user} has Argon2id cost {:?}, the config says {kdf:?}; \
                 logging in here would re-wrap it",
                slot.kdf
            )
            .into());
        }
    }
    let session = vault.login(user, password, Purpose::Mail).await?;
    let inbox = coffer_mail::Mail::new(vault.clone())
        .list_mailboxes(&session)
        .await?
        .into_iter()
        .find(|m| m.name.is_inbox())
        .ok_or("the user has no INBOX")?
        .id;

    let start = Instant::now();
    let mut bytes = 0u64;
    let mut unseen = 0usize;
    let mut last_report = Instant::now();
    for first in (0..count).step_by(BATCH) {
        let end = (first + BATCH).min(count);
        let mut rows = Vec::with_capacity(end - first);
        let mut blobs = JoinSet::new();
        for i in first..end {
            let body = message(i);
            bytes += body.len() as u64;
            let flags: &[Flag] = if i.is_multiple_of(UNSEEN_EVERY) {
                unseen += 1;
                &[]
            } else {
                &[Flag::Seen]
            };
            let msg_id = MsgId(rand::random());
            let blob_id = BlobId(rand::random());
            let meta = MessageMeta {
                blob_id: blob_id.0,
                size: body.len() as u64,
                internal_date: FIRST_DATE + 60 * i as i64,
                tz_offset_minutes: 0,
                summary: Some(std::sync::Arc::new(coffer_mail::mime::summary(&body))),
            };
            // The same three seals as Mail::append.
            let (generation, sealed_body, sealed_meta, sealed_flags) = session.with(|k| {
                let (g, sealed_body) = k.seal_body(&blob_id, &body);
                let (_, meta) = k.seal(Place::MessageMeta(msg_id.as_bytes()), &meta.encode());
                let (_, flags) = k.seal(
                    Place::MessageFlags(msg_id.as_bytes()),
                    &codec::encode_flags(flags),
                );
                (g, sealed_body, meta, flags)
            })?;
            rows.push(NewMessage {
                msg_id,
                blob_id,
                blob_len: sealed_body.len() as u64,
                seal: SealRef::IndexKey(generation),
                sealed_meta,
                sealed_flags: Some(sealed_flags),
            });
            if blobs.len() >= BLOB_WRITES
                && let Some(done) = blobs.join_next().await
            {
                done??;
            }
            let store = store.clone();
            blobs.spawn(async move { store.put_blob(&user_id, &blob_id, sealed_body).await });
        }
        while let Some(done) = blobs.join_next().await {
            done??;
        }
        store.append(&user_id, inbox, rows).await?;
        if last_report.elapsed() >= Duration::from_secs(5) {
            last_report = Instant::now();
            eprintln!(
                "  filled {end}/{count} ({:.0} msgs/s)",
                end as f64 / start.elapsed().as_secs_f64()
            );
        }
    }
    let took = start.elapsed();
    let stored = store.list_messages(&user_id, inbox).await?.len();
    if stored != count {
        return Err(
            format!("INBOX holds {stored} messages after the fill, expected {count}").into(),
        );
    }
    Ok(Filled {
        took,
        bytes,
        unseen,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn messages_are_reproducible_and_within_the_sizes() {
        for i in [0, 1, 99_999] {
            let m = message(i);
            assert_eq!(m, message(i));
            assert!((MIN_SIZE..=MAX_SIZE).contains(&m.len()), "{}", m.len());
            assert!(m.ends_with(b"\r\n"));
        }
        assert_ne!(message(1), message(2));
        assert_eq!(rfc5322_date(FIRST_DATE), "Thu, 01 Jan 2026 00:00:00 +0000");
    }
}
