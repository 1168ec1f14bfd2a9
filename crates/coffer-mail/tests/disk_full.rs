//! Disk full: a clear error, nothing half-written, acknowledged mail intact, and service
//! resumes when space returns. The data directory lives on a small tmpfs mounted for the
//! test (the test suite runs as root in CI; mounting is required, never skipped).

use coffer_mail::{InternalDate, Mail, MailError, Mailbox};
use coffer_store::sqlite::SqliteStore;
use coffer_store::{Store, StoreError};
use coffer_types::{MailboxId, MailboxName, SecurityMode};
use coffer_vault::{Pepper, Unlocked, Vault, VaultConfig};
use std::path::PathBuf;
use std::process::Command;
use std::sync::Arc;
use std::time::Duration;

struct Tmpfs(PathBuf);

impl Tmpfs {
    fn mount(size: &str) -> Tmpfs {
        let dir = std::env::temp_dir().join(format!("coffer-diskfull-{}", rand::random::<u64>()));
        std::fs::create_dir_all(&dir).unwrap();
        let out = Command::new("mount")
            .args(["-t", "tmpfs", "-o", &format!("size={size}"), "tmpfs"])
            .arg(&dir)
            .output()
            .expect("running mount");
        assert!(
            out.status.success(),
            "this test needs to mount a small tmpfs (run the suite as root, as CI does): {}",
            String::from_utf8_lossy(&out.stderr)
        );
        Tmpfs(dir)
    }
}

impl Drop for Tmpfs {
    fn drop(&mut self) {
        let _ = Command::new("umount").arg(&self.0).status();
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

/// Store, mail layer, a session of a new user and that user's INBOX, on `fs`.
async fn open(fs: &Tmpfs) -> (SqliteStore, Mail, Unlocked, Mailbox) {
    let store = SqliteStore::open(&fs.0).unwrap();
    let vault = Arc::new(Vault::new(
        Arc::new(store.clone()),
        Arc::new(Pepper::from_bytes(rand::random())),
        VaultConfig {
            kdf: coffer_vault::kdf::INSECURE_TEST_PARAMS,
            argon2_concurrency: 1,
            grace: Duration::ZERO,
            recovery_key: None,
        },
    ));
    let mail = Mail::new(vault);
    let s = mail
        .create_user("alice", "correct horse battery", SecurityMode::High)
        .await
        .unwrap();
    let inbox = mail
        .find_mailbox(&s, &MailboxName::inbox())
        .await
        .unwrap()
        .unwrap();
    (store, mail, s, inbox)
}

/// Appends `body` until an append fails (at most `max` times): how many were stored and
/// the error.
async fn fill(
    mail: &Mail,
    s: &Unlocked,
    mailbox: MailboxId,
    body: &[u8],
    max: usize,
) -> (usize, MailError) {
    let mut stored = 0;
    loop {
        match mail
            .append(s, mailbox, body, &[], InternalDate::now())
            .await
        {
            Ok(_) => stored += 1,
            Err(e) => return (stored, e),
        }
        assert!(stored < max, "the filesystem never filled up");
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn disk_full_is_a_clear_error_and_nothing_is_half_written() {
    let fs = Tmpfs::mount("16m");
    let (store, mail, s, inbox) = open(&fs).await;

    let body: Vec<u8> = (0..200 * 1024).map(|i| b'a' + (i % 23) as u8).collect();
    let (stored, err) = fill(&mail, &s, inbox.id, &body, 100).await;
    assert!(stored >= 3, "only {stored} messages fit");
    assert!(
        matches!(err, MailError::Store(StoreError::DiskFull(_))),
        "expected a disk-full error, got: {err}"
    );
    assert!(err.to_string().contains("disk full"), "{err}");

    // Nothing half-written: no temp blob left, every stored message opens, check is clean.
    let tmp: Vec<_> = std::fs::read_dir(fs.0.join("blobs/tmp")).unwrap().collect();
    assert!(tmp.is_empty(), "temp files left behind: {tmp:?}");
    let msgs = mail.messages(&s, inbox.id).await.unwrap();
    assert_eq!(msgs.len(), stored);
    for m in &msgs {
        assert_eq!(mail.body(&s, m).await.unwrap().as_slice(), body.as_slice());
    }
    assert_eq!(store.check().await.unwrap(), Vec::<String>::new());

    // Space comes back: appends work again.
    let first = msgs[0].uid;
    mail.expunge(&s, inbox.id, vec![first, msgs[1].uid])
        .await
        .unwrap();
    store.sweep_orphans(0).await.unwrap();
    mail.append(&s, inbox.id, &body, &[], InternalDate::now())
        .await
        .unwrap();
    assert_eq!(mail.messages(&s, inbox.id).await.unwrap().len(), stored - 1);
}

/// The same with messages small enough to be stored inside the database (coffer-store's
/// INLINE_BLOB_MAX): the store refuses new mail while the reserve of free space is all
/// that is left (coffer_store::sqlite::free_space_reserve), so the expunge that frees
/// space still commits.
#[tokio::test(flavor = "multi_thread")]
async fn disk_full_with_small_messages_inside_the_database() {
    let fs = Tmpfs::mount("48m");
    let (store, mail, s, inbox) = open(&fs).await;

    let body: Vec<u8> = (0..20 * 1024).map(|i| b'a' + (i % 23) as u8).collect();
    let (stored, err) = fill(&mail, &s, inbox.id, &body, 3000).await;
    assert!(stored >= 300, "only {stored} messages fit");
    assert!(
        matches!(err, MailError::Store(StoreError::DiskFull(_))),
        "expected a disk-full error, got: {err}"
    );
    let msgs = mail.messages(&s, inbox.id).await.unwrap();
    assert_eq!(msgs.len(), stored, "every acknowledged message is there");
    for m in &msgs {
        assert_eq!(mail.body(&s, m).await.unwrap().as_slice(), body.as_slice());
    }
    assert_eq!(store.check().await.unwrap(), Vec::<String>::new());

    // The space kept free lets the expunge commit; the pages it frees inside the
    // database take new mail again.
    // (In batches, as a client expunges what was deleted: each expunge writes the zeroed
    // pages of its messages to the WAL, secure_delete, and the reserve is finite.)
    let half = stored / 2;
    for batch in msgs[..half].chunks(25) {
        let gone: Vec<_> = batch.iter().map(|m| m.uid).collect();
        mail.expunge(&s, inbox.id, gone).await.unwrap();
    }
    store.sweep_orphans(0).await.unwrap();
    mail.append(&s, inbox.id, &body, &[], InternalDate::now())
        .await
        .unwrap();
    assert_eq!(
        mail.messages(&s, inbox.id).await.unwrap().len(),
        stored - half + 1
    );
    assert_eq!(store.check().await.unwrap(), Vec::<String>::new());
}
