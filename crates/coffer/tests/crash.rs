//! kill -9 never loses or corrupts acknowledged mail: a child process appends in a loop
//! and is killed with SIGKILL at random moments, many times. Afterwards every message it
//! acknowledged is present and opens byte for byte, nothing half-written is visible, and
//! `coffer check` is clean.

mod common;

use common::{PW, Scratch};
use std::io::{BufRead, BufReader, Write};
use std::process::{Command, Stdio};
use std::time::Duration;

#[path = "../examples/append_loop.rs"]
#[allow(dead_code)]
mod append_loop;

fn example_binary() -> std::path::PathBuf {
    // Integration tests live in target/<profile>/deps; cargo builds examples next door.
    let exe = std::env::current_exe().unwrap();
    let profile_dir = exe.parent().unwrap().parent().unwrap();
    let path = profile_dir.join("examples").join("append_loop");
    assert!(
        path.exists(),
        "{} missing: `cargo test -p coffer` builds it (a `--test crash` filter does not; run `cargo build --examples` first)",
        path.display()
    );
    path
}

#[tokio::test(flavor = "multi_thread")]
async fn acknowledged_appends_survive_sigkill() {
    let s = Scratch::init();
    s.add_user("crashuser", PW);
    let bin = example_binary();
    let mut acked: Vec<(u32, u64)> = Vec::new();
    const ROUNDS: u64 = 25;
    for round in 0..ROUNDS {
        let mut child = Command::new(&bin)
            .args([
                s.path("coffer-data").to_str().unwrap(),
                s.path("coffer.pepper").to_str().unwrap(),
                "crashuser",
                &(round * 1_000_000).to_string(),
            ])
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::null())
            .spawn()
            .unwrap();
        child
            .stdin
            .take()
            .unwrap()
            .write_all(format!("{PW}\n").as_bytes())
            .unwrap();
        let stdout = child.stdout.take().unwrap();
        let reader = std::thread::spawn(move || {
            BufReader::new(stdout)
                .lines()
                .map_while(Result::ok)
                .filter_map(|l| {
                    let mut parts = l.split_whitespace();
                    (parts.next() == Some("ACK")).then(|| {
                        let uid = parts.next().unwrap().parse::<u32>().unwrap();
                        let n = parts.next().unwrap().parse::<u64>().unwrap();
                        (uid, n)
                    })
                })
                .collect::<Vec<_>>()
        });
        let wait_ms = 40 + rand::random::<u64>() % 400;
        std::thread::sleep(Duration::from_millis(wait_ms));
        child.kill().unwrap(); // SIGKILL
        child.wait().unwrap();
        acked.extend(reader.join().unwrap());
    }
    assert!(
        acked.len() >= 20,
        "the loop acknowledged only {} appends",
        acked.len()
    );

    // Open the store as a fresh process would and check every acknowledged message.
    let store = coffer_store::sqlite::SqliteStore::open(&s.path("coffer-data")).unwrap();
    let vault = std::sync::Arc::new(coffer_vault::Vault::new(
        std::sync::Arc::new(store),
        std::sync::Arc::new(coffer_vault::Pepper::load(&s.path("coffer.pepper")).unwrap()),
        coffer_vault::VaultConfig {
            kdf: coffer_vault::kdf::INSECURE_TEST_PARAMS,
            argon2_concurrency: 1,
            grace: Duration::ZERO,
            recovery_key: None,
        },
    ));
    let mail = coffer_mail::Mail::new(vault.clone());
    let session = vault
        .login("crashuser", PW, coffer_vault::Purpose::Mail)
        .await
        .unwrap();
    let inbox = mail
        .find_mailbox(&session, &coffer_types::MailboxName::inbox())
        .await
        .unwrap()
        .unwrap();
    let present = mail.messages(&session, inbox.id).await.unwrap();
    for (uid, n) in &acked {
        let m = present
            .iter()
            .find(|m| m.uid.get() == *uid)
            .unwrap_or_else(|| panic!("acknowledged message uid {uid} is missing"));
        let body = mail.body(&session, m).await.unwrap();
        assert_eq!(
            body.as_slice(),
            append_loop::body(*n).as_slice(),
            "uid {uid} changed"
        );
    }
    // Every message present (acknowledged or not) opens: no half message is visible.
    let (checked, problems) = mail.check_user(&session).await.unwrap();
    assert!(problems.is_empty(), "{problems:?}");
    assert!(checked >= acked.len());
    drop(session);

    let out = s.ok(
        &["check", "--user", "crashuser", "--password-stdin"],
        &format!("{PW}\n"),
    );
    assert!(out.contains("check: OK"), "{out}");
}
