//! The running server and the CLI together: every user command works while `coffer serve`
//! runs, and the server sees its effect at once; a large APPEND is held in memory once.

mod common;

use common::{PW, Scratch, start_server_with_addrs};
use std::io::{BufRead, BufReader, Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::time::Duration;

/// A blocking raw IMAP exchange: sends `tag command`, returns the tagged line.
fn tagged(r: &mut BufReader<TcpStream>, tag: &str, command: &str) -> String {
    r.get_mut()
        .write_all(format!("{tag} {command}\r\n").as_bytes())
        .unwrap();
    loop {
        let mut line = String::new();
        assert!(r.read_line(&mut line).unwrap() > 0, "connection closed");
        if line.starts_with(&format!("{tag} ")) {
            return line.trim_end().to_string();
        }
    }
}

fn connect(addr: SocketAddr) -> BufReader<TcpStream> {
    let s = TcpStream::connect(addr).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(20))).unwrap();
    let mut r = BufReader::new(s);
    let mut greeting = String::new();
    r.read_line(&mut greeting).unwrap();
    assert!(greeting.starts_with("* OK"));
    r
}

fn login(addr: SocketAddr, user: &str, password: &str) -> String {
    let mut r = connect(addr);
    tagged(&mut r, "l1", &format!("LOGIN {user} \"{password}\""))
}

#[test]
fn cli_changes_take_effect_in_the_running_server_at_once() {
    let s = Scratch::init();
    let server = start_server_with_addrs(&s);
    s.add_user("alice", PW);
    assert!(
        login(server.imap, "alice", PW).starts_with("l1 OK"),
        "a user added by the CLI logs in"
    );

    // Keep a session open so the keyring stays unlocked (and re-login would skip Argon2id).
    let mut held = connect(server.imap);
    assert!(tagged(&mut held, "h1", &format!("LOGIN alice \"{PW}\"")).starts_with("h1 OK"));

    // Password change through the CLI: the old password stops working at once.
    s.ok(
        &["user", "passwd", "alice", "--password-stdin"],
        &format!("{PW}\nthe new password\n"),
    );
    assert!(login(server.imap, "alice", PW).contains("NO [AUTHENTICATIONFAILED]"));
    assert!(login(server.imap, "alice", "the new password").starts_with("l1 OK"));

    // App password: works, then revoked by the CLI, stops at once.
    let out = s.ok(
        &[
            "user",
            "app-password",
            "add",
            "alice",
            "--label",
            "laptop",
            "--password-stdin",
        ],
        "the new password\n",
    );
    let id = out
        .split("id ")
        .nth(1)
        .unwrap()
        .split('.')
        .next()
        .unwrap()
        .trim()
        .to_string();
    let secret = out
        .lines()
        .map(str::trim)
        .find(|l| l.len() == 19 && l.matches('-').count() == 3)
        .unwrap()
        .to_string();
    assert!(login(server.imap, "alice", &secret).starts_with("l1 OK"));
    s.ok(&["user", "app-password", "revoke", "alice", &id], "");
    assert!(login(server.imap, "alice", &secret).contains("NO [AUTHENTICATIONFAILED]"));

    // Reset through the CLI: the old password stops opening anything, the new one works.
    s.ok(
        &["user", "reset", "alice", "--yes", "--password-stdin"],
        "after reset password\n",
    );
    held.get_mut().write_all(b"h2 NOOP\r\n").unwrap();
    let mut bye = String::new();
    held.read_line(&mut bye).unwrap();
    assert!(
        bye.starts_with("* BYE"),
        "the session on the old keyring ends: {bye}"
    );
    assert!(login(server.imap, "alice", "the new password").contains("NO [AUTHENTICATIONFAILED]"));
    assert!(login(server.imap, "alice", "after reset password").starts_with("l1 OK"));

    // Delete through the CLI.
    s.ok(&["user", "delete", "alice", "--yes"], "");
    assert!(
        login(server.imap, "alice", "after reset password").contains("NO [AUTHENTICATIONFAILED]")
    );
    drop(held);
}

fn vm_kib(pid: u32, field: &str) -> u64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap();
    let line = status.lines().find(|l| l.starts_with(field)).unwrap();
    line.split_whitespace().nth(1).unwrap().parse().unwrap()
}

#[test]
fn a_large_append_is_not_held_twice_in_memory() {
    let s = Scratch::init();
    // Allow a 48 MiB message.
    let cfg = std::fs::read_to_string(s.path("coffer.toml")).unwrap();
    std::fs::write(
        s.path("coffer.toml"),
        cfg.replace(
            "max_message_bytes = 67108864",
            "max_message_bytes = 60000000",
        ),
    )
    .unwrap();
    s.add_user("alice", PW);
    let server = start_server_with_addrs(&s);
    let pid = server.child.id();
    let mut r = connect(server.imap);
    assert!(tagged(&mut r, "a1", &format!("LOGIN alice \"{PW}\"")).starts_with("a1 OK"));
    // Warm up allocator and code paths with a small APPEND.
    r.get_mut()
        .write_all(b"a2 APPEND INBOX {5+}\r\nhello\r\n")
        .unwrap();
    let mut line = String::new();
    r.read_line(&mut line).unwrap();
    let before = vm_kib(pid, "VmHWM:");
    const SIZE: usize = 48 * 1024 * 1024;
    let mut body = Vec::with_capacity(SIZE);
    while body.len() < SIZE {
        body.extend_from_slice(b"Subject: big\r\n\r\n0123456789abcdefghijklmnopqrstuvwxyz0123456789abcdefghijklmnopqrst\r\n");
    }
    body.truncate(SIZE);
    r.get_mut()
        .write_all(format!("a3 APPEND INBOX {{{SIZE}+}}\r\n").as_bytes())
        .unwrap();
    r.get_mut().write_all(&body).unwrap();
    r.get_mut().write_all(b"\r\n").unwrap();
    let mut line = String::new();
    r.read_line(&mut line).unwrap();
    assert!(line.starts_with("a3 OK"), "{line}");
    let peak = vm_kib(pid, "VmHWM:");
    let grown_mib = (peak.saturating_sub(before)) as f64 / 1024.0;
    // One copy is 48 MiB; two (plaintext and ciphertext, or a parse copy) would be 96.
    eprintln!(
        "peak memory grew by {grown_mib:.1} MiB for a {} MiB APPEND",
        SIZE >> 20
    );
    assert!(
        grown_mib < 80.0,
        "peak memory grew by {grown_mib:.0} MiB for a 48 MiB APPEND"
    );
    // And the message is all there.
    let size = tagged(&mut r, "a4", "SELECT INBOX");
    assert!(size.starts_with("a4 OK"));
    r.get_mut()
        .write_all(b"a5 FETCH 2 RFC822.SIZE\r\n")
        .unwrap();
    let mut got = String::new();
    r.read_line(&mut got).unwrap();
    assert!(got.contains(&format!("RFC822.SIZE {SIZE}")), "{got}");
    let mut rest = [0u8; 64];
    let _ = r.get_mut().read(&mut rest);
}
