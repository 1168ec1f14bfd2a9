//! LMTP delivery and kill -9: an LMTP client streams numbered messages into `coffer serve`,
//! one transaction at a time, and notes each message whose `250` arrived; the server is
//! killed with SIGKILL at a random moment and restarted, round after round. Afterwards
//! every acknowledged message is in the INBOX exactly once with its exact bytes, no
//! message is there twice, every message present opens (`coffer check --user` exits 0),
//! so no half-written message is visible.
//!
//! Also `coffer deliver` (the local delivery agent): its exit codes (0 delivered, 67 no
//! such user, 65 too large) and an IDLE session of the user hearing of a delivery made by
//! that separate process within a second.

mod common;

use common::imap::Imap;
use common::{PW, Scratch, start_server_with_addrs};
use rand::Rng;
use std::collections::BTreeMap;
use std::io::{BufRead, BufReader, Write};
use std::net::{SocketAddr, TcpStream};
use std::process::Stdio;
use std::time::{Duration, Instant};

const USER: &str = "crashuser";
const SENDER: &str = "crash-sender@sender.test";
const RCPT: &str = "crashuser@localhost";

/// Message number `n`: mostly small, every 5th about 64 KiB, every 23rd about 1 MiB, so a
/// kill falls into writes of every size.
fn crash_message(n: u32) -> Vec<u8> {
    let mut m = format!(
        "Message-ID: <crash-{n}@coffer.test>\r\n\
         From: <{SENDER}>\r\n\
         Subject: crash test message {n}\r\n\
         \r\n"
    )
    .into_bytes();
    let lines = if n.is_multiple_of(23) {
        16_000
    } else if n.is_multiple_of(5) {
        1_000
    } else {
        3 + n % 10
    };
    for i in 0..lines {
        m.extend_from_slice(
            format!("message {n} line {i:06} ------------------------------------------\r\n")
                .as_bytes(),
        );
    }
    m.extend_from_slice(b".a line with a leading dot\r\nthe end\r\n");
    m
}

/// The message number in a stored message's Message-ID.
fn number_of(stored: &[u8]) -> Option<u32> {
    let text = String::from_utf8_lossy(&stored[..stored.len().min(4096)]);
    let at = text.find("Message-ID: <crash-")? + "Message-ID: <crash-".len();
    text[at..].split('@').next()?.parse().ok()
}

/// A raw LMTP client over TCP that keeps a transcript of the current transaction (commands
/// and replies, not the message data) for failure reports.
struct Lmtp {
    r: BufReader<TcpStream>,
    transcript: Vec<String>,
}

impl Lmtp {
    fn connect(addr: SocketAddr) -> std::io::Result<Lmtp> {
        let s = TcpStream::connect(addr)?;
        s.set_read_timeout(Some(Duration::from_secs(30)))?;
        s.set_nodelay(true)?;
        let mut c = Lmtp {
            r: BufReader::new(s),
            transcript: Vec::new(),
        };
        c.reply()?;
        Ok(c)
    }

    /// One (possibly multi-line) reply: its code and its lines.
    fn reply(&mut self) -> std::io::Result<(u16, String)> {
        let mut all = String::new();
        loop {
            let mut line = String::new();
            if self.r.read_line(&mut line)? == 0 {
                return Err(std::io::ErrorKind::UnexpectedEof.into());
            }
            self.transcript.push(format!("S: {}", line.trim_end()));
            all.push_str(&line);
            if line.len() < 4 || line.as_bytes()[3] != b'-' {
                let code = line.get(..3).and_then(|c| c.parse().ok()).unwrap_or(0);
                return Ok((code, all));
            }
        }
    }

    fn command(&mut self, cmd: &str) -> std::io::Result<u16> {
        self.transcript.push(format!("C: {cmd}"));
        self.r
            .get_mut()
            .write_all(format!("{cmd}\r\n").as_bytes())?;
        Ok(self.reply()?.0)
    }

    /// Sends `message` after DATA's 354, dot-stuffed, and returns the final reply's code.
    fn data(&mut self, message: &[u8]) -> std::io::Result<u16> {
        let mut wire = Vec::with_capacity(message.len() + 64);
        for line in message.split_inclusive(|b| *b == b'\n') {
            if line.starts_with(b".") {
                wire.push(b'.');
            }
            wire.extend_from_slice(line);
        }
        wire.extend_from_slice(b".\r\n");
        self.transcript
            .push(format!("C: <{} bytes of message data>", message.len()));
        self.r.get_mut().write_all(&wire)?;
        Ok(self.reply()?.0)
    }
}

#[derive(Default)]
struct Stream {
    /// Numbers whose `250` after the data arrived.
    acked: Vec<u32>,
    /// The number whose transaction was cut by the kill, if any.
    in_flight: Option<u32>,
    /// The next unused number.
    next: u32,
    /// Transcripts of transactions the server refused or answered unexpectedly.
    anomalies: Vec<String>,
}

/// Delivers numbered messages from `first` on, one transaction at a time, until the
/// connection breaks (the server was killed). Bounded by the read timeout and a count.
fn deliver_stream(addr: SocketAddr, first: u32) -> Stream {
    let mut out = Stream {
        next: first,
        ..Default::default()
    };
    let Ok(mut c) = Lmtp::connect(addr) else {
        return out;
    };
    if !matches!(c.command("LHLO crash.test"), Ok(250)) {
        return out;
    }
    for _ in 0..100_000 {
        let n = out.next;
        out.next += 1;
        c.transcript.clear();
        out.in_flight = Some(n);
        let step = (|| -> std::io::Result<Option<u16>> {
            for (cmd, want) in [
                (format!("MAIL FROM:<{SENDER}>"), 250),
                (format!("RCPT TO:<{RCPT}>"), 250),
                ("DATA".to_string(), 354),
            ] {
                let code = c.command(&cmd)?;
                if code != want {
                    return Ok(Some(code));
                }
            }
            let code = c.data(&crash_message(n))?;
            Ok((code != 250).then_some(code))
        })();
        match step {
            Ok(None) => {
                out.acked.push(n);
                out.in_flight = None;
            }
            Ok(Some(_)) => {
                out.anomalies.push(c.transcript.join("\n"));
                out.in_flight = None;
                if c.command("RSET").is_err() {
                    break;
                }
            }
            // The server is gone: this transaction never got its 250.
            Err(_) => break,
        }
    }
    out
}

#[test]
fn acknowledged_lmtp_deliveries_survive_sigkill() {
    let started = Instant::now();
    let s = Scratch::init();
    s.add_user(USER, PW);
    let mut rng = rand::thread_rng();
    const ROUNDS: usize = 15;
    let mut acked: Vec<u32> = Vec::new();
    let mut cut: Vec<u32> = Vec::new();
    let mut anomalies: Vec<String> = Vec::new();
    let mut next = 1u32;
    for round in 0..ROUNDS {
        let mut server = start_server_with_addrs(&s);
        let addr = *server.lmtp.first().expect("no LMTP TCP listener");
        let first = next;
        let client = std::thread::spawn(move || deliver_stream(addr, first));
        let wait = rng.gen_range(100..=600);
        std::thread::sleep(Duration::from_millis(wait));
        server.child.kill().unwrap(); // SIGKILL
        server.child.wait().unwrap();
        let got = client.join().unwrap();
        eprintln!(
            "round {round}: killed after {wait} ms, {} acknowledged, cut in flight: {:?}",
            got.acked.len(),
            got.in_flight
        );
        acked.extend(&got.acked);
        cut.extend(got.in_flight);
        anomalies.extend(got.anomalies);
        next = got.next;
        drop(server);
    }
    assert!(
        anomalies.is_empty(),
        "the server refused transactions without being killed:\n{}",
        anomalies.join("\n---\n")
    );
    assert!(
        acked.len() >= 30,
        "only {} messages acknowledged in {ROUNDS} rounds",
        acked.len()
    );

    // Every message in the INBOX, read over IMAP.
    let server = start_server_with_addrs(&s);
    let stored = Imap::login(server.imap, USER, PW).fetch_all("INBOX");
    let mut seen: BTreeMap<u32, Vec<u32>> = BTreeMap::new();
    for (uid, bytes) in &stored {
        let n = number_of(bytes).unwrap_or_else(|| {
            panic!(
                "UID {uid} is no message of the stream (half written?):\n{}",
                String::from_utf8_lossy(&bytes[..bytes.len().min(2000)])
            )
        });
        let original = crash_message(n);
        assert!(
            bytes.ends_with(&original),
            "UID {uid} (message {n}) differs from what was sent ({} bytes stored, {} sent)",
            bytes.len(),
            original.len()
        );
        let prefix = String::from_utf8_lossy(&bytes[..bytes.len() - original.len()]);
        assert!(
            prefix.starts_with(&format!(
                "Return-Path: <{SENDER}>\r\nDelivered-To: {RCPT}\r\nReceived: "
            )) && prefix.contains("(Coffer) with LMTP id ")
                && prefix.ends_with("\r\n"),
            "UID {uid}: trace headers {prefix:?}"
        );
        seen.entry(n).or_default().push(*uid);
    }
    let twice: Vec<_> = seen.iter().filter(|(_, uids)| uids.len() > 1).collect();
    assert!(
        twice.is_empty(),
        "messages stored more than once: {twice:?}"
    );
    let missing: Vec<u32> = acked
        .iter()
        .copied()
        .filter(|n| !seen.contains_key(n))
        .collect();
    assert!(
        missing.is_empty(),
        "acknowledged messages missing after kill -9: {missing:?}"
    );
    // Nothing but acknowledged messages and those cut by a kill (delivered, their 250 lost).
    let unexpected: Vec<u32> = seen
        .keys()
        .copied()
        .filter(|n| !acked.contains(n) && !cut.contains(n))
        .collect();
    assert!(unexpected.is_empty(), "never sent: {unexpected:?}");
    drop(server);

    // Every message present opens and verifies (no half message), and the store is whole.
    let out = s.run(
        &["check", "--user", USER, "--password-stdin"],
        &format!("{PW}\n"),
    );
    assert_eq!(
        out.status.code(),
        Some(0),
        "coffer check --user failed:\n{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(String::from_utf8_lossy(&out.stdout).contains("check: OK"));
    let cut_stored = cut.iter().filter(|n| seen.contains_key(n)).count();
    eprintln!(
        "{ROUNDS} rounds of kill -9: {} messages acknowledged, all present once; {} cut \
         in flight ({cut_stored} of them stored, their 250 lost); {} messages stored; {:?}",
        acked.len(),
        cut.len(),
        stored.len(),
        started.elapsed()
    );
}

/// Runs `coffer deliver ARGS` with `message` on standard input; returns the exit code and
/// standard error. A write error is ignored: deliver may exit before reading its input.
fn deliver(s: &Scratch, args: &[&str], message: &[u8]) -> (Option<i32>, String) {
    let mut all = vec!["deliver"];
    all.extend_from_slice(args);
    let mut child = s
        .command(&all)
        .stdin(Stdio::piped())
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let mut stdin = child.stdin.take().unwrap();
    let message = message.to_vec();
    let writer = std::thread::spawn(move || {
        let _ = stdin.write_all(&message);
    });
    let out = child.wait_with_output().unwrap();
    let _ = writer.join();
    (
        out.status.code(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

#[test]
fn coffer_deliver_exit_codes() {
    let s = Scratch::init();
    let cfg = std::fs::read_to_string(s.path("coffer.toml")).unwrap();
    let cfg = cfg.replace("max_message_bytes = 67108864", "max_message_bytes = 4096");
    assert!(cfg.contains("max_message_bytes = 4096"));
    std::fs::write(s.path("coffer.toml"), cfg).unwrap();
    s.add_user("dlvuser", PW);

    // Bare LF line ends, as from a pipe.
    let message =
        b"Message-ID: <deliver-1@coffer.test>\nSubject: by coffer deliver\n\nline one\n.line two\n";
    let (code, err) = deliver(
        &s,
        &["--to", "dlvuser", "--from", "someone@sender.test"],
        message,
    );
    assert_eq!(code, Some(0), "deliver to a known user: {err}");

    let (code, err) = deliver(&s, &["--to", "nosuchuser"], message);
    assert_eq!(code, Some(67), "deliver to an unknown user: {err}");

    let mut big = b"Subject: too big\n\n".to_vec();
    big.resize(10_000, b'x');
    let (code, err) = deliver(&s, &["--to", "dlvuser"], &big);
    assert_eq!(
        code,
        Some(65),
        "deliver of 10000 bytes over a 4096 limit: {err}"
    );

    // Exactly the one delivered message, CRLF line ends, with the trace headers on top.
    let server = start_server_with_addrs(&s);
    let stored = Imap::login(server.imap, "dlvuser", PW).fetch_all("INBOX");
    let expected = b"Return-Path: <someone@sender.test>\r\nDelivered-To: dlvuser\r\n\
Message-ID: <deliver-1@coffer.test>\r\nSubject: by coffer deliver\r\n\r\nline one\r\n.line two\r\n";
    assert_eq!(stored.len(), 1, "INBOX after three deliveries, one good");
    assert_eq!(
        String::from_utf8_lossy(&stored[0].1),
        String::from_utf8_lossy(expected)
    );
}

#[test]
fn idle_hears_of_coffer_deliver_within_a_second() {
    let s = Scratch::init();
    s.add_user("idleuser", PW);
    let server = start_server_with_addrs(&s);
    let mut imap = Imap::login(server.imap, "idleuser", PW);
    imap.ok("SELECT INBOX");
    imap.send("i1 IDLE\r\n");
    let cont = imap.read_line();
    assert!(cont.starts_with('+'), "IDLE answered {cont:?}");

    let (code, err) = deliver(
        &s,
        &["--to", "idleuser"],
        b"Subject: wake up\r\n\r\nhello\r\n",
    );
    assert_eq!(code, Some(0), "{err}");
    let delivered = Instant::now();
    imap.set_read_timeout(Duration::from_millis(50));
    let mut other = Vec::new();
    loop {
        if let Some(line) = imap.try_read_line() {
            if line == "* 1 EXISTS" {
                break;
            }
            other.push(line);
        }
        assert!(
            delivered.elapsed() < Duration::from_secs(1),
            "no \"* 1 EXISTS\" within 1 s of coffer deliver's exit; heard {other:?}"
        );
    }
    let latency = delivered.elapsed();
    imap.set_read_timeout(Duration::from_secs(30));
    imap.send("DONE\r\n");
    loop {
        let line = imap.read_line();
        if line.starts_with("i1 ") {
            assert!(line.starts_with("i1 OK"), "{line}");
            break;
        }
    }
    eprintln!("IDLE heard of the delivery {latency:?} after coffer deliver exited");
    let stored = imap.fetch_all("INBOX");
    assert_eq!(stored.len(), 1);
    assert!(
        stored[0]
            .1
            .starts_with(b"Delivered-To: idleuser\r\nSubject: wake up\r\n")
    );
}
