//! Disk full: a clear error, nothing half-written, acknowledged mail intact, and service
//! resumes when space returns. The data directory lives on a 3 MiB tmpfs mounted for the
//! test (the test suite runs as root in CI; mounting is required, never skipped).

use coffer_mail::{InternalDate, Mail, MailError};
use coffer_store::sqlite::SqliteStore;
use coffer_store::{Store, StoreError};
use coffer_types::{MailboxName, SecurityMode};
use coffer_vault::{Pepper, Vault, VaultConfig};
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

#[tokio::test(flavor = "multi_thread")]
async fn disk_full_is_a_clear_error_and_nothing_is_half_written() {
    let fs = Tmpfs::mount("3m");
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

    let body: Vec<u8> = (0..200 * 1024).map(|i| b'a' + (i % 23) as u8).collect();
    let mut stored = 0;
    let err = loop {
        match mail
            .append(&s, inbox.id, &body, &[], InternalDate::now())
            .await
        {
            Ok(_) => stored += 1,
            Err(e) => break e,
        }
        assert!(stored < 100, "a 3 MiB filesystem never filled up");
    };
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
