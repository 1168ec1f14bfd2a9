//! Test helper for the kill -9 crash test (tests/crash.rs): appends messages to a user's
//! INBOX in a loop and prints `ACK <uid> <n>` after each append returns, i.e. after it is
//! durable. The test kills this process with SIGKILL at random moments.
//!
//! Usage: append_loop DATA_DIR PEPPER_FILE USER START_N  (password on standard input)

use coffer_mail::{InternalDate, Mail};
use coffer_store::sqlite::SqliteStore;
use coffer_types::MailboxName;
use coffer_vault::{Pepper, Purpose, Vault, VaultConfig};
use std::io::{BufRead, Write};
use std::sync::Arc;

/// The body of message `n`: deterministic, 2 to 40 KiB, so the test can regenerate it.
pub fn body(n: u64) -> Vec<u8> {
    let mut out = format!("Subject: crash test {n}\r\n\r\n").into_bytes();
    let mut x = n.wrapping_mul(0x9e37_79b9_7f4a_7c15) | 1;
    let len = 2048 + (x % (38 * 1024)) as usize;
    while out.len() < len {
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        out.push(b'a' + (x % 26) as u8);
        if out.len() % 76 == 0 {
            out.extend_from_slice(b"\r\n");
        }
    }
    out
}

#[tokio::main]
async fn main() {
    let args: Vec<String> = std::env::args().collect();
    let [_, data, pepper, user, start] = &args[..] else {
        eprintln!("usage: append_loop DATA_DIR PEPPER_FILE USER START_N");
        std::process::exit(2);
    };
    let start: u64 = start.parse().expect("START_N is a number");
    let mut password = String::new();
    std::io::stdin()
        .lock()
        .read_line(&mut password)
        .expect("password on stdin");
    let store = SqliteStore::open(std::path::Path::new(data)).expect("open store");
    let pepper = Pepper::load(std::path::Path::new(pepper)).expect("load pepper");
    let vault = Arc::new(Vault::new(
        Arc::new(store),
        Arc::new(pepper),
        VaultConfig {
            kdf: coffer_vault::kdf::INSECURE_TEST_PARAMS,
            argon2_concurrency: 1,
            grace: std::time::Duration::ZERO,
            recovery_key: None,
        },
    ));
    let mail = Mail::new(vault.clone());
    let session = vault
        .login(user, password.trim_end(), Purpose::Mail)
        .await
        .expect("login");
    let inbox = mail
        .find_mailbox(&session, &MailboxName::inbox())
        .await
        .expect("list")
        .expect("INBOX");
    let stdout = std::io::stdout();
    for n in start.. {
        let (uid, _) = mail
            .append(&session, inbox.id, &body(n), &[], InternalDate::now())
            .await
            .expect("append");
        let mut out = stdout.lock();
        writeln!(out, "ACK {} {n}", uid.get()).expect("stdout");
        out.flush().expect("stdout");
    }
}
