//! Several `coffer serve` nodes on one PostgreSQL database (issue 7): concurrent APPENDs and
//! LMTP deliveries through two nodes, IDLE hearing of another node's delivery, PostgreSQL
//! lost while running (through a TCP proxy the test cuts), and the marker scan over a
//! `pg_dump` of the database.
//!
//! These tests need PostgreSQL on 127.0.0.1:5432 with trust authentication for `postgres`
//! (scripts/test makes sure one runs). They FAIL, never skip, when it cannot be reached.
//! Each test creates its own database `coffer_nodes_<random>` and drops it at the end.

mod common;

use common::imap::{Imap, number_after, quote};
use common::{PW, Scratch, start_server_with_addrs};
use std::collections::{BTreeMap, HashSet};
use std::io::{BufRead, BufReader, Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::process::Command;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

const PG_HOST: &str = "127.0.0.1";
const PG_PORT: u16 = 5432;

fn psql(db: &str, sql: &str) -> std::process::Output {
    Command::new("psql")
        .args([
            "-h",
            PG_HOST,
            "-p",
            &PG_PORT.to_string(),
            "-U",
            "postgres",
            "-d",
            db,
            "-v",
            "ON_ERROR_STOP=1",
            "-tAc",
            sql,
        ])
        .env("PGCONNECT_TIMEOUT", "10")
        .output()
        .expect("running psql (Debian's postgresql-client)")
}

/// A database of its own for one test, dropped WITH (FORCE) when the guard is dropped.
struct Db {
    name: String,
}

impl Db {
    fn create() -> Db {
        let name = format!("coffer_nodes_{:016x}", rand::random::<u64>());
        let out = psql("postgres", &format!("CREATE DATABASE {name}"));
        assert!(
            out.status.success(),
            "PostgreSQL on {PG_HOST}:{PG_PORT} is required for these tests (user postgres, \
             trust auth); CREATE DATABASE failed: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        Db { name }
    }

    fn url_via(&self, port: u16) -> String {
        format!("postgres://postgres@{PG_HOST}:{port}/{}", self.name)
    }

    fn url(&self) -> String {
        self.url_via(PG_PORT)
    }

    fn scalar(&self, sql: &str) -> String {
        let out = psql(&self.name, sql);
        assert!(
            out.status.success(),
            "{sql}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8_lossy(&out.stdout).trim().to_string()
    }
}

impl Drop for Db {
    fn drop(&mut self) {
        let _ = psql(
            "postgres",
            &format!("DROP DATABASE IF EXISTS {} WITH (FORCE)", self.name),
        );
    }
}

/// Points a scratch installation's `[storage] url` at `url`.
fn use_postgres(s: &Scratch, url: &str) {
    let path = s.path("coffer.toml");
    let cfg = std::fs::read_to_string(&path).unwrap();
    assert!(cfg.contains("url = \"\""), "template without [storage] url");
    std::fs::write(
        &path,
        cfg.replace("url = \"\"", &format!("url = \"{url}\"")),
    )
    .unwrap();
}

/// The first node of an installation on PostgreSQL: `coffer init` again once the URL is
/// set records the pepper's check value in the database.
fn first_node(url: &str) -> Scratch {
    let s = Scratch::init();
    use_postgres(&s, url);
    s.ok(&["init"], "");
    s
}

/// A node sharing `first`'s pepper (the same pepper must be on every node).
fn second_node(first: &Scratch, url: &str) -> Scratch {
    let s = Scratch::init();
    use std::os::unix::fs::PermissionsExt;
    let pepper = std::fs::read(first.path("coffer.pepper")).unwrap();
    let dest = s.path("coffer.pepper");
    std::fs::write(&dest, pepper).unwrap();
    std::fs::set_permissions(&dest, std::fs::Permissions::from_mode(0o600)).unwrap();
    use_postgres(&s, url);
    s
}

// --- clients ------------------------------------------------------------------------------

/// APPENDs `message` to INBOX on a logged-in connection; returns the tagged answer.
fn append_raw(imap: &mut Imap, tag: &str, mailbox: &str, message: &[u8]) -> String {
    imap.send(&format!(
        "{tag} APPEND {} {{{}}}\r\n",
        quote(mailbox),
        message.len()
    ));
    let cont = imap.read_line();
    if !cont.starts_with('+') {
        return cont;
    }
    imap.send(&String::from_utf8_lossy(message));
    imap.send("\r\n");
    loop {
        let line = imap.read_line();
        if line.starts_with(&format!("{tag} ")) {
            return line;
        }
    }
}

/// UID from an `OK [APPENDUID v uid]` answer.
fn appended_uid(answer: &str) -> Option<u32> {
    let at = answer.find("APPENDUID ")?;
    let rest = &answer[at + "APPENDUID ".len()..];
    let uid = rest.split_whitespace().nth(1)?;
    uid.trim_end_matches(']').parse().ok()
}

struct Lmtp {
    r: BufReader<TcpStream>,
}

impl Lmtp {
    fn connect(addr: SocketAddr) -> std::io::Result<Lmtp> {
        let s = TcpStream::connect(addr)?;
        s.set_read_timeout(Some(Duration::from_secs(30)))?;
        s.set_nodelay(true)?;
        let mut c = Lmtp {
            r: BufReader::new(s),
        };
        c.reply()?;
        c.command("LHLO test.local")?;
        Ok(c)
    }

    fn reply(&mut self) -> std::io::Result<(u16, String)> {
        let mut all = String::new();
        loop {
            let mut line = String::new();
            if self.r.read_line(&mut line)? == 0 {
                return Err(std::io::ErrorKind::UnexpectedEof.into());
            }
            all.push_str(&line);
            if line.len() < 4 || line.as_bytes()[3] != b'-' {
                let code = line.get(..3).and_then(|c| c.parse().ok()).unwrap_or(0);
                return Ok((code, all.trim_end().to_string()));
            }
        }
    }

    fn command(&mut self, cmd: &str) -> std::io::Result<(u16, String)> {
        self.r
            .get_mut()
            .write_all(format!("{cmd}\r\n").as_bytes())?;
        self.reply()
    }

    /// One whole transaction; returns every reply line of it, the last one deciding.
    fn deliver(&mut self, to: &str, message: &[u8]) -> std::io::Result<Vec<(u16, String)>> {
        let mut replies = vec![self.command("MAIL FROM:<sender@example.org>")?];
        if replies[0].0 != 250 {
            return Ok(replies);
        }
        replies.push(self.command(&format!("RCPT TO:<{to}@localhost>"))?);
        if replies[1].0 != 250 {
            self.command("RSET")?;
            return Ok(replies);
        }
        replies.push(self.command("DATA")?);
        if replies[2].0 != 354 {
            return Ok(replies);
        }
        let mut wire = Vec::with_capacity(message.len() + 8);
        for line in message.split_inclusive(|b| *b == b'\n') {
            if line.starts_with(b".") {
                wire.push(b'.');
            }
            wire.extend_from_slice(line);
        }
        wire.extend_from_slice(b".\r\n");
        self.r.get_mut().write_all(&wire)?;
        replies.push(self.reply()?);
        Ok(replies)
    }
}

fn test_message(token: &str) -> Vec<u8> {
    format!(
        "From: sender@example.org\r\nTo: someone@localhost\r\nSubject: test {token}\r\n\
         Message-ID: <{token}@example.org>\r\n\r\nbody of {token}\r\n"
    )
    .into_bytes()
}

/// INBOX of `user` read through `addr`: (UID, MODSEQ, bytes) in UID order.
fn inbox_with_modseq(addr: SocketAddr, user: &str) -> Vec<(u32, u64, Vec<u8>)> {
    let mut imap = Imap::login(addr, user, PW);
    let bodies = imap.fetch_all("INBOX");
    imap.ok("EXAMINE INBOX");
    let mut modseqs = BTreeMap::new();
    if !bodies.is_empty() {
        for r in imap.ok("UID FETCH 1:* (UID MODSEQ)") {
            if !r.text.contains(" FETCH (") {
                continue;
            }
            let uid = number_after(&r.text, "UID ").unwrap();
            let at = r.text.find("MODSEQ (").expect("MODSEQ in FETCH") + "MODSEQ (".len();
            let digits: String = r.text[at..]
                .chars()
                .take_while(|c| c.is_ascii_digit())
                .collect();
            modseqs.insert(uid, digits.parse::<u64>().unwrap());
        }
    }
    imap.ok("LOGOUT");
    bodies
        .into_iter()
        .map(|(uid, b)| {
            let m = *modseqs
                .get(&uid)
                .unwrap_or_else(|| panic!("no MODSEQ for UID {uid}"));
            (uid, m, b)
        })
        .collect()
}

fn check_user(s: &Scratch, user: &str) {
    let out = s.run(
        &["check", "--user", user, "--password-stdin"],
        &format!("{PW}\n"),
    );
    assert!(
        out.status.success(),
        "coffer check --user {user}: {}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
}

fn contains(hay: &[u8], needle: &[u8]) -> bool {
    hay.windows(needle.len()).any(|w| w == needle)
}

// --- a: two nodes, concurrent writers -------------------------------------------------------

#[test]
fn two_nodes_concurrent_appends_and_deliveries() {
    let db = Db::create();
    let a = first_node(&db.url());
    a.add_user("alice", PW);
    a.add_user("bob", PW);
    let b = second_node(&a, &db.url());
    let node_a = start_server_with_addrs(&a);
    let node_b = start_server_with_addrs(&b);

    const PER_TASK: usize = 25;
    // Acknowledged tokens per user, and UIDs from APPENDUID.
    let acked: Arc<Mutex<Vec<(String, String)>>> = Arc::default();
    let append_uids: Arc<Mutex<Vec<u32>>> = Arc::default();
    let started = Instant::now();
    let mut threads = Vec::new();
    for (n, node) in [&node_a, &node_b].into_iter().enumerate() {
        // Two IMAP appenders (both as alice) and two LMTP deliverers (alice, bob) per node.
        for t in 0..2 {
            let (addr, acked, uids) = (node.imap, acked.clone(), append_uids.clone());
            threads.push(std::thread::spawn(move || {
                let mut imap = Imap::login(addr, "alice", PW);
                for i in 0..PER_TASK {
                    let token = format!("imap-n{n}-t{t}-m{i}");
                    let answer =
                        append_raw(&mut imap, &format!("a{i}"), "INBOX", &test_message(&token));
                    assert!(answer.contains(" OK "), "APPEND {token}: {answer}");
                    let uid = appended_uid(&answer)
                        .unwrap_or_else(|| panic!("APPEND without APPENDUID: {answer}"));
                    uids.lock().unwrap().push(uid);
                    acked.lock().unwrap().push(("alice".into(), token));
                }
                imap.ok("LOGOUT");
            }));
        }
        for (t, user) in ["alice", "bob"].into_iter().enumerate() {
            let (addr, acked) = (node.lmtp[0], acked.clone());
            threads.push(std::thread::spawn(move || {
                let mut lmtp = Lmtp::connect(addr).unwrap();
                for i in 0..PER_TASK {
                    let token = format!("lmtp-n{n}-t{t}-m{i}");
                    let replies = lmtp.deliver(user, &test_message(&token)).unwrap();
                    let last = replies.last().unwrap();
                    assert_eq!(last.0, 250, "delivery {token}: {replies:?}");
                    acked.lock().unwrap().push((user.to_string(), token));
                }
                let _ = lmtp.command("QUIT");
            }));
        }
    }
    for t in threads {
        t.join().expect("a writer failed");
    }
    let elapsed = started.elapsed();
    let acked = acked.lock().unwrap().clone();
    assert_eq!(acked.len(), 2 * 4 * PER_TASK);
    eprintln!(
        "two nodes: {} messages (APPEND + LMTP, 8 connections) in {elapsed:?}: {:.0} messages/s",
        acked.len(),
        acked.len() as f64 / elapsed.as_secs_f64()
    );
    let uids = append_uids.lock().unwrap().clone();
    let unique: HashSet<u32> = uids.iter().copied().collect();
    assert_eq!(unique.len(), uids.len(), "APPENDUID handed out a UID twice");

    for (user, node) in [("alice", &node_a), ("bob", &node_b), ("alice", &node_b)] {
        let inbox = inbox_with_modseq(node.imap, user);
        let expected: Vec<&String> = acked
            .iter()
            .filter(|(u, _)| u == user)
            .map(|(_, t)| t)
            .collect();
        assert_eq!(inbox.len(), expected.len(), "{user}: messages in INBOX");
        let mut seen_uids = HashSet::new();
        for w in inbox.windows(2) {
            assert!(w[0].0 < w[1].0, "UIDs not increasing");
            assert!(
                w[0].1 < w[1].1,
                "{user}: MODSEQ {} of UID {} not below MODSEQ {} of UID {}",
                w[0].1,
                w[0].0,
                w[1].1,
                w[1].0
            );
        }
        for (uid, _, _) in &inbox {
            assert!(seen_uids.insert(*uid), "{user}: UID {uid} twice");
        }
        for token in expected {
            let needle = format!("body of {token}\r\n");
            let n = inbox
                .iter()
                .filter(|(_, _, b)| contains(b, needle.as_bytes()))
                .count();
            assert_eq!(n, 1, "{user}: acknowledged {token} found {n} times");
        }
        if user == "alice" {
            for uid in &uids {
                assert!(
                    inbox.iter().any(|(u, _, _)| u == uid),
                    "APPENDUID {uid} missing"
                );
            }
        }
    }
    drop(node_b);
    drop(node_a);
    check_user(&a, "alice");
    check_user(&b, "bob");
}

// --- b: IDLE across nodes -------------------------------------------------------------------

#[test]
fn idle_on_one_node_hears_delivery_through_the_other() {
    let db = Db::create();
    let a = first_node(&db.url());
    a.add_user("idler", PW);
    let b = second_node(&a, &db.url());
    let node_a = start_server_with_addrs(&a);
    let node_b = start_server_with_addrs(&b);

    let mut imap = Imap::login(node_a.imap, "idler", PW);
    imap.ok("SELECT INBOX");
    // Several rounds: the latency depends on where in the 500 ms poll the commit lands.
    let mut latencies = Vec::new();
    let mut lmtp = Lmtp::connect(node_b.lmtp[0]).unwrap();
    for round in 1..=3u32 {
        imap.set_read_timeout(Duration::from_secs(30));
        imap.send(&format!("i{round} IDLE\r\n"));
        let cont = imap.read_line();
        assert!(cont.starts_with('+'), "IDLE answered {cont:?}");
        let replies = lmtp
            .deliver("idler", &test_message(&format!("idle-{round}")))
            .unwrap();
        assert_eq!(replies.last().unwrap().0, 250, "{replies:?}");
        let delivered = Instant::now();
        imap.set_read_timeout(Duration::from_millis(50));
        let mut other = Vec::new();
        loop {
            if let Some(line) = imap.try_read_line() {
                if line == format!("* {round} EXISTS") {
                    break;
                }
                other.push(line);
            }
            assert!(
                delivered.elapsed() < Duration::from_secs(1),
                "round {round}: no \"* {round} EXISTS\" on node A within 1 s of node B's 250; heard {other:?}"
            );
        }
        latencies.push(delivered.elapsed());
        imap.set_read_timeout(Duration::from_secs(30));
        imap.send("DONE\r\n");
        loop {
            let line = imap.read_line();
            if line.starts_with(&format!("i{round} ")) {
                assert!(line.starts_with(&format!("i{round} OK")), "{line}");
                break;
            }
        }
    }
    eprintln!("IDLE on node A heard node B's deliveries after {latencies:?}");
    drop(lmtp);
    drop(node_b);
    drop(node_a);
}

// --- c: PostgreSQL lost while running -------------------------------------------------------

/// A TCP proxy 127.0.0.1:port → PostgreSQL that the test can cut and restore. While cut,
/// every open connection is shut down and new ones are accepted and closed at once.
struct Proxy {
    port: u16,
    cut: Arc<AtomicBool>,
    stop: Arc<AtomicBool>,
    conns: Arc<Mutex<Vec<TcpStream>>>,
    accept: Option<std::thread::JoinHandle<()>>,
}

impl Proxy {
    fn start() -> Proxy {
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        listener.set_nonblocking(true).unwrap();
        let port = listener.local_addr().unwrap().port();
        let cut = Arc::new(AtomicBool::new(false));
        let stop = Arc::new(AtomicBool::new(false));
        let conns: Arc<Mutex<Vec<TcpStream>>> = Arc::default();
        let (c2, s2, k2) = (cut.clone(), stop.clone(), conns.clone());
        let accept = std::thread::spawn(move || {
            while !s2.load(Ordering::SeqCst) {
                let client = match listener.accept() {
                    Ok((c, _)) => c,
                    Err(_) => {
                        std::thread::sleep(Duration::from_millis(5));
                        continue;
                    }
                };
                if c2.load(Ordering::SeqCst) {
                    drop(client);
                    continue;
                }
                client.set_nonblocking(false).unwrap();
                let Ok(server) = TcpStream::connect((PG_HOST, PG_PORT)) else {
                    continue;
                };
                let mut k = k2.lock().unwrap();
                k.push(client.try_clone().unwrap());
                k.push(server.try_clone().unwrap());
                for (mut from, mut to) in [
                    (client.try_clone().unwrap(), server.try_clone().unwrap()),
                    (server, client),
                ] {
                    std::thread::spawn(move || {
                        let mut buf = [0u8; 16384];
                        loop {
                            match from.read(&mut buf) {
                                Ok(0) | Err(_) => break,
                                Ok(n) => {
                                    if to.write_all(&buf[..n]).is_err() {
                                        break;
                                    }
                                }
                            }
                        }
                        let _ = to.shutdown(std::net::Shutdown::Both);
                        let _ = from.shutdown(std::net::Shutdown::Both);
                    });
                }
            }
        });
        Proxy {
            port,
            cut,
            stop,
            conns,
            accept: Some(accept),
        }
    }

    fn cut(&self) {
        self.cut.store(true, Ordering::SeqCst);
        for c in self.conns.lock().unwrap().drain(..) {
            let _ = c.shutdown(std::net::Shutdown::Both);
        }
    }

    fn restore(&self) {
        self.cut.store(false, Ordering::SeqCst);
    }
}

impl Drop for Proxy {
    fn drop(&mut self) {
        self.cut();
        self.stop.store(true, Ordering::SeqCst);
        if let Some(t) = self.accept.take() {
            let _ = t.join();
        }
    }
}

/// Runs one IMAP command; the tagged answer, or None if the connection ended.
fn try_command(imap: &mut Imap, tag: &str, command: &str) -> Option<(Vec<String>, String)> {
    let stream_ok = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
        imap.send(&format!("{tag} {command}\r\n"));
        let mut untagged = Vec::new();
        loop {
            let resp = imap.read_response();
            if resp.text.starts_with(&format!("{tag} ")) {
                return (untagged, resp.text);
            }
            untagged.push(resp.text);
        }
    }));
    stream_ok.ok()
}

#[test]
fn postgres_lost_while_running_then_back() {
    let db = Db::create();
    let proxy = Proxy::start();
    let s = first_node(&db.url_via(proxy.port));
    s.add_user("carol", PW);
    let node = start_server_with_addrs(&s);

    // Some acknowledged mail before the cut.
    let mut acked = Vec::new();
    let mut lmtp = Lmtp::connect(node.lmtp[0]).unwrap();
    for i in 0..5 {
        let token = format!("before-{i}");
        let r = lmtp.deliver("carol", &test_message(&token)).unwrap();
        assert_eq!(r.last().unwrap().0, 250, "{r:?}");
        acked.push(token);
    }
    let mut imap = Imap::login(node.imap, "carol", PW);
    imap.ok("SELECT INBOX");
    let answer = append_raw(&mut imap, "ap0", "INBOX", &test_message("before-append"));
    assert!(answer.contains(" OK "), "{answer}");
    acked.push("before-append".into());

    proxy.cut();
    let cut_at = Instant::now();
    // Everything seen while cut, and every way it differs from what issue 7 asks; asserted
    // only after service resumed, so that a failure reports the whole behaviour.
    let mut transcript = Vec::new();
    let mut problems = Vec::new();

    // The open IMAP session: commands that must read or write the store.
    imap.set_read_timeout(Duration::from_secs(60));
    let during = test_message("during");
    for (tag, cmd) in [
        ("c1", "UID FETCH 1:* (BODY.PEEK[])".to_string()),
        ("c2", "STATUS INBOX (MESSAGES UIDNEXT)".to_string()),
        (
            "c3",
            format!(
                "APPEND INBOX {{{}+}}\r\n{}",
                during.len(),
                String::from_utf8_lossy(&during)
            ),
        ),
    ] {
        let shown_cmd = cmd.split("\r\n").next().unwrap().to_string();
        let outcome = try_command(&mut imap, tag, &cmd);
        let shown = match &outcome {
            Some((_, done)) => done.clone(),
            None => "connection ended".to_string(),
        };
        transcript.push(format!(
            "IMAP (open session) {shown_cmd} -> {shown} ({:?} after the cut)",
            cut_at.elapsed()
        ));
        if outcome.is_none() {
            break;
        }
        let acceptable =
            shown.contains("NO [UNAVAILABLE]") || (tag == "c1" && shown.contains(" OK "));
        if !acceptable {
            problems.push(format!("IMAP {shown_cmd} answered {shown:?}"));
        }
    }

    // A new login.
    let mut fresh = Imap::connect(node.imap);
    fresh.set_read_timeout(Duration::from_secs(60));
    let outcome = try_command(&mut fresh, "l1", &format!("LOGIN carol {}", quote(PW)));
    let shown = match &outcome {
        Some((_, done)) => done.clone(),
        None => "connection ended".to_string(),
    };
    transcript.push(format!("IMAP new LOGIN -> {shown}"));
    if outcome.is_some() && !shown.contains("NO [UNAVAILABLE]") {
        problems.push(format!("new LOGIN answered {shown:?}"));
    }

    // LMTP, on the open connection and on a new one.
    for (which, conn) in [
        ("open connection", Ok(lmtp)),
        ("new connection", Lmtp::connect(node.lmtp[0])),
    ] {
        let r = conn.and_then(|mut c| c.deliver("carol", &test_message("during-lmtp")));
        transcript.push(format!("LMTP ({which}) -> {r:?}"));
        match &r {
            Ok(replies) => {
                let last = replies.last().unwrap();
                if !(last.0 == 451 && last.1.contains("4.3.0")) {
                    problems.push(format!(
                        "LMTP ({which}) answered {:?} instead of 451 4.3.0",
                        last.1
                    ));
                }
            }
            Err(e) => problems.push(format!("LMTP ({which}) ended: {e}")),
        }
    }
    eprintln!("while PostgreSQL was cut:\n  {}", transcript.join("\n  "));
    proxy.restore();
    let restored = Instant::now();
    // Service resumes: a delivery and a new login, retried for at most 30 s.
    let mut resumed = None;
    while restored.elapsed() < Duration::from_secs(30) {
        let ok = Lmtp::connect(node.lmtp[0])
            .and_then(|mut l| l.deliver("carol", &test_message("after")))
            .map(|r| r.last().unwrap().0 == 250)
            .unwrap_or(false);
        if ok {
            resumed = Some(restored.elapsed());
            break;
        }
        std::thread::sleep(Duration::from_millis(200));
    }
    let resumed = resumed.expect("delivery did not resume within 30 s of PostgreSQL's return");
    acked.push("after".into());
    eprintln!("delivery accepted again {resumed:?} after the proxy was restored");
    // The session that saw the outage works again too.
    let again = try_command(&mut imap, "r1", "STATUS INBOX (MESSAGES)").map(|o| o.1);
    eprintln!("IMAP (open session) after the return: STATUS -> {again:?}");
    assert!(
        again.as_deref().is_some_and(|d| d.contains(" OK ")),
        "the open session did not recover: {again:?}"
    );
    let inbox = inbox_with_modseq(node.imap, "carol");
    for token in &acked {
        let needle = format!("body of {token}\r\n");
        assert!(
            inbox.iter().any(|(_, _, b)| contains(b, needle.as_bytes())),
            "acknowledged {token} lost"
        );
    }
    for token in ["during", "during-lmtp"] {
        let needle = format!("body of {token}\r\n");
        assert!(
            !inbox.iter().any(|(_, _, b)| contains(b, needle.as_bytes())),
            "{token} was refused but stored"
        );
    }
    drop(imap);
    drop(fresh);
    drop(node);
    check_user(&s, "carol");
    drop(proxy);
    assert!(
        problems.is_empty(),
        "with PostgreSQL cut the node did not answer as issue 7 asks: {problems:#?}\nall answers: {transcript:#?}"
    );
}

// --- d: marker scan over pg_dump ------------------------------------------------------------

fn base64(data: &[u8]) -> String {
    const T: &[u8; 64] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";
    let mut out = String::new();
    for chunk in data.chunks(3) {
        let b = [
            chunk[0],
            *chunk.get(1).unwrap_or(&0),
            *chunk.get(2).unwrap_or(&0),
        ];
        let n = (b[0] as u32) << 16 | (b[1] as u32) << 8 | b[2] as u32;
        for i in 0..=chunk.len() {
            out.push(T[(n >> (18 - 6 * i) & 63) as usize] as char);
        }
    }
    out
}

fn hex(data: &[u8]) -> String {
    data.iter().map(|b| format!("{b:02x}")).collect()
}

/// Encodings under which a marker could appear in the dump (as in coffer-mail's marker test).
fn needles(marker: &str) -> Vec<Vec<u8>> {
    let mut out = vec![
        marker.as_bytes().to_vec(),
        hex(marker.as_bytes()).into_bytes(),
        hex(marker.as_bytes()).to_uppercase().into_bytes(),
    ];
    for pad in 0..3 {
        let mut data = vec![b'x'; pad];
        data.extend_from_slice(marker.as_bytes());
        let enc = base64(&data);
        let skip = (pad * 4).div_ceil(3) + 1;
        out.push(enc.as_bytes()[skip..enc.len() - 2].to_vec());
    }
    out
}

#[test]
fn no_marker_in_a_pg_dump() {
    let db = Db::create();
    let s = first_node(&db.url());
    let tag = format!("{:012x}", rand::random::<u64>() >> 16);
    let user = format!("mkuser{tag}");
    let markers: Vec<String> = [
        "subjdeliv",
        "fromdeliv",
        "bodydeliv",
        "subjappend",
        "fromappend",
        "bodyappend",
        "mailboxname",
    ]
    .iter()
    .map(|m| format!("MK{m}{tag}"))
    .chain([user.clone()])
    .collect();
    s.add_user(&user, PW);
    let node = start_server_with_addrs(&s);

    // Delivered while the user is away: sealed to the public key.
    let delivered = format!(
        "From: {} <x@example.org>\r\nSubject: {}\r\n\r\nhello {}\r\n",
        markers[1], markers[0], markers[2]
    );
    let mut lmtp = Lmtp::connect(node.lmtp[0]).unwrap();
    let r = lmtp.deliver(&user, delivered.as_bytes()).unwrap();
    assert_eq!(r.last().unwrap().0, 250, "{r:?}");

    let mut imap = Imap::login(node.imap, &user, PW);
    imap.ok(&format!("CREATE {}", quote(&markers[6])));
    let appended = format!(
        "From: {} <y@example.org>\r\nSubject: {}\r\n\r\nworld {}\r\n",
        markers[4], markers[3], markers[5]
    );
    for mailbox in ["INBOX", markers[6].as_str()] {
        let answer = append_raw(&mut imap, "ap", mailbox, appended.as_bytes());
        assert!(answer.contains(" OK "), "{answer}");
    }
    // Open INBOX so that the delivered message is resealed under the index key too.
    let inbox = imap.fetch_all("INBOX");
    assert_eq!(inbox.len(), 2);
    imap.ok("LOGOUT");
    // One more delivery after the session ended.
    let r = lmtp.deliver(&user, delivered.as_bytes()).unwrap();
    assert_eq!(r.last().unwrap().0, 250, "{r:?}");
    drop(node);

    let out = Command::new("pg_dump")
        .args([
            "-h",
            PG_HOST,
            "-p",
            &PG_PORT.to_string(),
            "-U",
            "postgres",
            &db.name,
        ])
        .output()
        .expect("running pg_dump");
    assert!(
        out.status.success(),
        "pg_dump: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let dump = out.stdout;
    let text = String::from_utf8_lossy(&dump);
    assert!(
        text.contains("COPY public.messages") && text.contains("COPY public.blobs"),
        "dump without the message tables"
    );
    assert_eq!(db.scalar("SELECT count(*) FROM messages"), "4");
    let mut hits = Vec::new();
    for m in &markers {
        for n in needles(m) {
            if contains(&dump, &n) {
                hits.push(format!("{m} as {:?}", String::from_utf8_lossy(&n)));
            }
        }
    }
    eprintln!(
        "pg_dump: {} bytes scanned for {} markers: {} hits",
        dump.len(),
        markers.len(),
        hits.len()
    );
    assert!(hits.is_empty(), "markers found in pg_dump: {hits:?}");
}

// --- e: coffer migrate, embedded → PostgreSQL → embedded -------------------------------------

/// A mailbox's STATUS answer and its messages as (UID, bytes).
type MailboxSnapshot = (String, Vec<(u32, Vec<u8>)>);

/// What a client sees of `user`'s mailboxes: per mailbox, STATUS values and every message.
fn snapshot(addr: SocketAddr, user: &str, mailboxes: &[&str]) -> Vec<MailboxSnapshot> {
    let mut imap = Imap::login(addr, user, PW);
    let mut out = Vec::new();
    for mb in mailboxes {
        let status = imap
            .ok(&format!(
                "STATUS {} (MESSAGES UIDNEXT UIDVALIDITY HIGHESTMODSEQ)",
                quote(mb)
            ))
            .into_iter()
            .find(|r| r.text.starts_with("* STATUS"))
            .expect("STATUS answer")
            .text;
        out.push((status, imap.fetch_all(mb)));
    }
    imap.ok("LOGOUT");
    out
}

fn set_storage(s: &Scratch, data_dir: &str, url: &str) {
    let path = s.path("coffer.toml");
    let cfg = std::fs::read_to_string(&path).unwrap();
    let cfg: Vec<String> = cfg
        .lines()
        .map(|l| {
            if l.starts_with("data_dir = ") {
                format!("data_dir = \"{data_dir}\"")
            } else if l.starts_with("url = ") {
                format!("url = \"{url}\"")
            } else {
                l.to_string()
            }
        })
        .collect();
    std::fs::write(&path, cfg.join("\n") + "\n").unwrap();
}

#[test]
fn migrate_embedded_to_postgres_and_back() {
    let db = Db::create();
    let s = Scratch::init();
    s.add_user("mig", PW);
    s.add_user("other", PW);
    let mailboxes = ["INBOX", "Work"];
    let before = {
        let node = start_server_with_addrs(&s);
        let mut lmtp = Lmtp::connect(node.lmtp[0]).unwrap();
        for i in 0..4 {
            for user in ["mig", "other"] {
                let r = lmtp
                    .deliver(user, &test_message(&format!("mig-lmtp-{i}")))
                    .unwrap();
                assert_eq!(r.last().unwrap().0, 250, "{r:?}");
            }
        }
        let mut imap = Imap::login(node.imap, "mig", PW);
        imap.ok("CREATE Work");
        for (i, mb) in ["INBOX", "Work", "Work"].into_iter().enumerate() {
            let answer = append_raw(&mut imap, "ap", mb, &test_message(&format!("mig-ap-{i}")));
            assert!(answer.contains(" OK "), "{answer}");
        }
        imap.ok("SELECT INBOX");
        imap.ok("UID STORE 2 +FLAGS (\\Flagged)");
        imap.ok("UID STORE 3 +FLAGS (\\Deleted)");
        imap.ok("EXPUNGE");
        imap.ok("LOGOUT");
        let snap = snapshot(node.imap, "mig", &mailboxes);
        assert_eq!(snap[0].1.len(), 4);
        snap
    };

    // Embedded → PostgreSQL.
    let out = s.run(&["migrate", "--to", &db.url()], "");
    let err = String::from_utf8_lossy(&out.stderr).to_string();
    assert!(out.status.success(), "migrate to PostgreSQL: {err}");
    assert!(
        err.contains("10/10 messages, 2/2 accounts"),
        "no progress in {err:?}"
    );
    assert_eq!(db.scalar("SELECT count(*) FROM expunged"), "1");
    set_storage(&s, "coffer-data", &db.url());
    s.ok(&["check"], "");
    check_user(&s, "mig");
    check_user(&s, "other");
    let on_pg = {
        let node = start_server_with_addrs(&s);
        let snap = snapshot(node.imap, "mig", &mailboxes);
        // New mailboxes get ids (and UIDVALIDITYs) past the copied ones.
        let mut imap = Imap::login(node.imap, "mig", PW);
        imap.ok("CREATE Later");
        let answer = append_raw(&mut imap, "ap", "Later", &test_message("on-pg"));
        assert!(answer.contains(" OK "), "{answer}");
        imap.ok("LOGOUT");
        snap
    };
    assert_eq!(on_pg, before, "what clients see changed with the migration");

    // A second migration into the same database is refused.
    let refused = s.fails(&["migrate", "--to", &db.url()], "");
    assert!(refused.contains("is the source itself"), "{refused}");

    // PostgreSQL → embedded.
    let out = s.run(&["migrate", "--to", "back-data"], "");
    let err = String::from_utf8_lossy(&out.stderr).to_string();
    assert!(out.status.success(), "migrate back: {err}");
    set_storage(&s, "back-data", "");
    s.ok(&["check"], "");
    check_user(&s, "mig");
    check_user(&s, "other");
    let node = start_server_with_addrs(&s);
    let back = snapshot(node.imap, "mig", &mailboxes);
    assert_eq!(
        back, before,
        "what clients see changed with the migration back"
    );
    let later = snapshot(node.imap, "mig", &["Later"]);
    assert_eq!(later[0].1.len(), 1);
    let mut imap = Imap::login(node.imap, "mig", PW);
    imap.ok("CREATE Newest");
    imap.ok("LOGOUT");
    // Into an embedded store that already has accounts: refused.
    drop(node);
    let refused = s.fails(&["migrate", "--to", "coffer-data"], "");
    assert!(refused.contains("already holds accounts"), "{refused}");
    let refused = s.fails(&["migrate", "--to", &db.url()], "");
    assert!(refused.contains("already holds accounts"), "{refused}");
}
