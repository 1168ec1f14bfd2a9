//! Postfix in front of Coffer, end to end: a private Postfix instance (its own config,
//! queue, data directory, log and SMTP port in the scratch directory) accepts mail over
//! SMTP for the virtual domain `example.test` and hands it to `coffer serve` by LMTP, once
//! over the unix socket (`lmtp:unix:`) and once over TCP (`lmtp:inet:`). Each recipient
//! then reads the message over IMAP with their password: it is the message as sent, byte
//! for byte, below the trace headers Postfix and Coffer prepend; `user+tagged@` lands in
//! the existing folder `tagged`. Afterwards no marker of the messages (Subject, From,
//! body, envelope sender, usernames) is found in any file of Coffer's data directory,
//! raw, hex or base64.
//!
//! Postfix is installed by `scripts/test` (Debian's package, its system instance neither
//! configured nor started). The test needs root, as Postfix's own `postfix start` does.
//! A missing Postfix fails the test, it never skips it. Every command runs with a time
//! limit; Postfix is stopped and Coffer killed when the test ends, also when it fails.

mod common;

use common::imap::Imap;
use common::{PW, Scratch, Server, start_server_with_addrs};
use std::fs::File;
use std::path::{Path, PathBuf};
use std::process::{Command, ExitStatus, Stdio};
use std::time::{Duration, Instant};

struct Ran {
    status: ExitStatus,
    output: String,
}

/// Runs `cmd` with standard output and error to a file (a daemon started by it may keep
/// them open: a pipe would never end), kills it and fails after `limit`.
fn run_bounded(cmd: &mut Command, dir: &Path, name: &str, limit: Duration) -> Ran {
    let out_path = dir.join(format!("{name}.out"));
    let out = File::create(&out_path).unwrap();
    let mut child = cmd
        .stdin(Stdio::null())
        .stdout(out.try_clone().unwrap())
        .stderr(out)
        .spawn()
        .unwrap_or_else(|e| panic!("cannot start {cmd:?}: {e}"));
    let start = Instant::now();
    let status = loop {
        if let Some(status) = child.try_wait().unwrap() {
            break Some(status);
        }
        if start.elapsed() > limit {
            let _ = child.kill();
            let _ = child.wait();
            break None;
        }
        std::thread::sleep(Duration::from_millis(20));
    };
    let output = String::from_utf8_lossy(&std::fs::read(&out_path).unwrap()).into_owned();
    let Some(status) = status else {
        panic!("{cmd:?} did not finish within {limit:?}; killed. Output:\n{output}");
    };
    Ran { status, output }
}

/// A Postfix instance of our own, stopped when dropped (also when the test fails; then
/// its log and queue are printed first).
struct Postfix {
    config_dir: PathBuf,
    work: PathBuf,
    log: PathBuf,
    smtp_port: u16,
}

impl Drop for Postfix {
    fn drop(&mut self) {
        if std::thread::panicking() {
            eprintln!("--- Postfix log ({}):\n{}", self.log.display(), self.log());
            eprintln!("--- Postfix queue:\n{}", self.queue());
        }
        let _ = self.postfix(&["stop"]);
        // `postfix stop` signals the master and returns: wait (bounded) until it is gone.
        let pid_file = self.work.join("queue/pid/master.pid");
        let pid = std::fs::read_to_string(&pid_file)
            .ok()
            .and_then(|p| p.trim().parse::<u32>().ok());
        if let Some(pid) = pid {
            let start = Instant::now();
            while Path::new(&format!("/proc/{pid}")).exists()
                && start.elapsed() < Duration::from_secs(10)
            {
                std::thread::sleep(Duration::from_millis(50));
            }
            if Path::new(&format!("/proc/{pid}")).exists() {
                let _ = self.postfix(&["abort"]);
            }
        }
    }
}

/// `postfix`'s primary group id: its daemons (the LMTP client included) run as
/// user `postfix` with that group.
fn postfix_gid() -> u32 {
    let passwd = std::fs::read_to_string("/etc/passwd").unwrap();
    passwd
        .lines()
        .find_map(|l| {
            let f: Vec<&str> = l.split(':').collect();
            (f.first() == Some(&"postfix")).then(|| f[3].parse().unwrap())
        })
        .expect("no user postfix: install Debian's postfix package (scripts/test does)")
}

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

impl Postfix {
    /// Writes main.cf and master.cf under `s`/postfix and starts the instance, with
    /// `transport` (an `lmtp:` transport) for the virtual mailbox domain example.test,
    /// whose users are `users`.
    fn start(s: &Scratch, transport: &str, users: &[&str]) -> Postfix {
        let ok = Command::new("postconf")
            .arg("-d")
            .arg("mail_version")
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .status()
            .is_ok_and(|st| st.success());
        assert!(
            ok,
            "`postconf -d mail_version` does not work: this test needs Postfix \
             (Debian's postfix package); scripts/test installs it"
        );
        assert!(
            rustix::process::geteuid().is_root(),
            "the Postfix test must run as root (Postfix's master and `postfix check` need it)"
        );
        let work = s.path("postfix");
        let config_dir = work.join("etc");
        let queue = work.join("queue");
        std::fs::create_dir_all(&config_dir).unwrap();
        // The queue directory must exist, owned by root; `postfix check` creates its
        // subdirectories (owned by postfix) and the data directory.
        std::fs::create_dir_all(&queue).unwrap();
        let maps = config_dir.join("virtual_mailboxes");
        let map_text: String = users
            .iter()
            .map(|u| format!("{u}@example.test ok\n"))
            .collect();
        std::fs::write(&maps, map_text).unwrap();
        let log = work.join("maillog");
        let main_cf = format!(
            "\
compatibility_level = 3.6
queue_directory = {queue}
data_directory = {data}
# Logging through postlogd into the scratch directory, not syslog.
maillog_file = {log}
maillog_file_prefixes = {work}
inet_interfaces = loopback-only
inet_protocols = ipv4
myhostname = mta.coffer.test
mydomain = coffer.test
myorigin = $myhostname
mydestination =
mynetworks = 127.0.0.0/8
relayhost =
default_transport = error
local_transport = error:local delivery is off
alias_maps =
alias_database =
smtputf8_enable = no
biff = no
# user+tagged@example.test: the map lookup falls back to user@example.test, and the
# full address goes to Coffer over LMTP.
recipient_delimiter = +
virtual_mailbox_domains = example.test
virtual_mailbox_maps = texthash:{maps}
virtual_transport = {transport}
# Retry fast should a delivery be deferred (Coffer answers 4xx, or is not up).
queue_run_delay = 1s
minimal_backoff_time = 1s
maximal_backoff_time = 2s
",
            queue = queue.display(),
            data = work.join("data").display(),
            log = log.display(),
            work = work.display(),
            maps = maps.display(),
        );
        std::fs::write(config_dir.join("main.cf"), main_cf).unwrap();
        let mut postfix = Postfix {
            config_dir,
            work,
            log,
            smtp_port: free_port(),
        };
        postfix.write_master_cf();
        let check = postfix.postfix(&["check"]);
        assert!(
            check.status.success(),
            "postfix check failed:\n{}\n{}",
            check.output,
            postfix.log()
        );
        // The SMTP port is picked free just before the start; another process may take
        // it in between, so try again a few times.
        for attempt in 0..5 {
            if attempt > 0 {
                postfix.smtp_port = free_port();
                postfix.write_master_cf();
            }
            let start = postfix.postfix(&["start"]);
            if start.status.success() {
                return postfix;
            }
            let log = postfix.log();
            if attempt == 4 || !log.contains("Address already in use") {
                panic!("postfix start failed:\n{}\n--- log:\n{log}", start.output);
            }
            let _ = postfix.postfix(&["stop"]);
        }
        unreachable!()
    }

    fn write_master_cf(&self) {
        std::fs::write(self.config_dir.join("master.cf"), master_cf(self.smtp_port)).unwrap();
    }

    fn postfix(&self, args: &[&str]) -> Ran {
        let mut cmd = Command::new("postfix");
        cmd.arg("-c").arg(&self.config_dir).args(args);
        run_bounded(
            &mut cmd,
            &self.work,
            &format!("postfix-{}", args.join("-")),
            Duration::from_secs(60),
        )
    }

    fn log(&self) -> String {
        String::from_utf8_lossy(&std::fs::read(&self.log).unwrap_or_default()).into_owned()
    }

    fn queue(&self) -> String {
        let mut cmd = Command::new("postqueue");
        cmd.arg("-c").arg(&self.config_dir).arg("-p");
        run_bounded(&mut cmd, &self.work, "postqueue", Duration::from_secs(30)).output
    }
}

/// Only the services this test needs, none chrooted (column 5 `n`), smtpd on `port` of
/// 127.0.0.1 only.
fn master_cf(port: u16) -> String {
    format!(
        "\
# service type  private unpriv  chroot  wakeup  maxproc command
127.0.0.1:{port} inet n - n - - smtpd
pickup    unix  n       -       n       60      1       pickup
cleanup   unix  n       -       n       -       0       cleanup
qmgr      unix  n       -       n       300     1       qmgr
rewrite   unix  -       -       n       -       -       trivial-rewrite
bounce    unix  -       -       n       -       0       bounce
defer     unix  -       -       n       -       0       bounce
trace     unix  -       -       n       -       0       bounce
verify    unix  -       -       n       -       1       verify
flush     unix  n       -       n       1000?   0       flush
proxymap  unix  -       -       n       -       -       proxymap
showq     unix  n       -       n       -       -       showq
error     unix  -       -       n       -       -       error
retry     unix  -       -       n       -       -       error
discard   unix  -       -       n       -       -       discard
lmtp      unix  -       -       n       -       -       lmtp
anvil     unix  -       -       n       -       1       anvil
scache    unix  -       -       n       -       1       scache
postlog   unix-dgram n  -       n       -       1       postlogd
"
    )
}

/// Sends `message` with Python's smtplib to 127.0.0.1:`port`, in one SMTP transaction.
fn smtp_send(dir: &Path, port: u16, sender: &str, recipient: &str, message: &[u8]) {
    const SCRIPT: &str = r#"
import smtplib, sys
port, sender, rcpt, path = sys.argv[1:5]
msg = open(path, "rb").read()
with smtplib.SMTP("127.0.0.1", int(port), local_hostname="client.coffer.test", timeout=30) as s:
    refused = s.sendmail(sender, [rcpt], msg)
    if refused:
        sys.exit(f"refused: {refused}")
print("sent")
"#;
    let path = dir.join(format!("outgoing-{}.eml", rand::random::<u32>()));
    std::fs::write(&path, message).unwrap();
    let mut cmd = Command::new("python3");
    cmd.arg("-c")
        .arg(SCRIPT)
        .arg(port.to_string())
        .arg(sender)
        .arg(recipient)
        .arg(&path);
    let ran = run_bounded(&mut cmd, dir, "smtp-send", Duration::from_secs(60));
    assert!(
        ran.status.success() && ran.output.contains("sent"),
        "sending to {recipient} through Postfix failed:\n{}",
        ran.output
    );
}

/// A message in CRLF form whose Subject, From and body carry the markers; its body has
/// lines that SMTP and LMTP must escape and unescape (leading dots) or leave alone.
fn message(tag: &str, n: u32, rcpt: &str, sender: &str, m: &Markers) -> Vec<u8> {
    let mut out = format!(
        "Message-ID: <postfix-{tag}-{n}@sender.test>\r\n\
         Date: Sat, 28 Nov 2026 10:00:0{n} +0000\r\n\
         From: {from} <{sender}>\r\n\
         To: <{rcpt}>\r\n\
         Subject: {subj} number {n}\r\n\
         MIME-Version: 1.0\r\n\
         Content-Type: text/plain; charset=us-ascii\r\n\
         \r\n",
        from = m.from,
        subj = m.subject,
    );
    out.push_str(".a line with a leading dot\r\n..and one with two\r\n.\t\r\n");
    out.push_str("From the start of a line (no > added)\r\n");
    out.push_str("trailing spaces   \r\n\ttab first\r\n\r\n");
    for i in 0..60 {
        out.push_str(&format!("{} line {i} of message {n}\r\n", m.body));
    }
    out.push_str("last line\r\n");
    out.into_bytes()
}

struct Markers {
    subject: String,
    from: String,
    body: String,
    sender: String,
}

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

/// The marker raw, as hex, and as base64 at each of the three alignments (without the
/// edge characters that depend on neighbouring bytes), as crates/coffer-mail/tests/marker.rs.
fn needles(marker: &str) -> Vec<Vec<u8>> {
    let mut out = vec![
        marker.as_bytes().to_vec(),
        coffer_types::hex(marker.as_bytes()).into_bytes(),
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

fn contains(hay: &[u8], needle: &[u8]) -> bool {
    hay.windows(needle.len()).any(|w| w == needle)
}

/// Hits of any marker in any file under `dir`, and the number of files scanned.
fn scan(dir: &Path, markers: &[&str]) -> (Vec<String>, usize) {
    let files = common::files(dir);
    let mut hits = Vec::new();
    for (path, bytes) in &files {
        for m in markers {
            for (i, n) in needles(m).iter().enumerate() {
                if contains(bytes, n) {
                    hits.push(format!("{m} (encoding {i}) in {}", path.display()));
                }
            }
        }
    }
    (hits, files.len())
}

/// Trace header fields (Return-Path, Delivered-To, Received, ...) ahead of `original`'s
/// first byte in `got`; panics unless `got` is exactly those fields followed by `original`.
fn trace_prefix<'a>(got: &'a [u8], original: &[u8], what: &str) -> &'a str {
    assert!(
        got.len() >= original.len() && got.ends_with(original),
        "{what}: the stored message is not the sent one below its trace headers.\n\
         --- sent:\n{}\n--- read over IMAP:\n{}",
        String::from_utf8_lossy(original),
        String::from_utf8_lossy(got)
    );
    let prefix = std::str::from_utf8(&got[..got.len() - original.len()]).unwrap();
    // Header fields only: every line is "Name: ..." or a folded continuation.
    assert!(prefix.ends_with("\r\n"), "{what}: prefix {prefix:?}");
    for line in prefix.trim_end_matches("\r\n").split("\r\n") {
        let field = line.starts_with([' ', '\t'])
            || line.split_once(':').is_some_and(|(name, _)| {
                !name.is_empty() && name.bytes().all(|b| b.is_ascii_graphic())
            });
        assert!(
            field,
            "{what}: {line:?} ahead of the message is no header field"
        );
    }
    prefix
}

fn run_through_postfix(unix_socket: bool) {
    let s = Scratch::init();
    let cfg = std::fs::read_to_string(s.path("coffer.toml")).unwrap();
    let cfg = cfg
        .replace("socket = \"\"", "socket = \"coffer-lmtp.sock\"")
        .replace(
            "local_domains = [\"localhost\"]",
            "local_domains = [\"example.test\"]",
        );
    assert!(cfg.contains("coffer-lmtp.sock") && cfg.contains("\"example.test\""));
    std::fs::write(s.path("coffer.toml"), cfg).unwrap();

    let tag = format!("{:016x}", rand::random::<u64>());
    let alice = format!("pfalice{tag}");
    let bob = format!("pfbob{tag}");
    s.add_user(&alice, PW);
    s.add_user(&bob, PW);
    let server: Server = start_server_with_addrs(&s);

    let socket = server
        .lmtp_socket
        .as_ref()
        .map(|p| s.dir.join(p.strip_prefix(".").unwrap_or(p)))
        .expect("no LMTP socket in the running line");
    // The socket is created mode 0660, owned by root (the user running coffer serve).
    // Postfix's LMTP client runs as user postfix: give the socket postfix's group, as
    // docs/OPERATING.md §11 advises ("give the MTA's delivery user that group"). The
    // scratch directory above it is 0755, so postfix can reach it.
    std::os::unix::fs::chown(&socket, None, Some(postfix_gid())).unwrap();
    let lmtp_tcp = server.lmtp[0];
    let transport = if unix_socket {
        format!("lmtp:unix:{}", socket.display())
    } else {
        format!("lmtp:inet:{}:{}", lmtp_tcp.ip(), lmtp_tcp.port())
    };

    // Bob's folder for user+tagged@example.test.
    Imap::login(server.imap, &bob, PW).ok("CREATE tagged");

    let started = Instant::now();
    let postfix = Postfix::start(&s, &transport, &[&alice, &bob]);
    eprintln!(
        "postfix started in {:?} (SMTP on 127.0.0.1:{}, virtual_transport = {transport})",
        started.elapsed(),
        postfix.smtp_port
    );

    let markers = Markers {
        subject: format!("MRKSUBJ{tag}"),
        from: format!("MRKFROM{tag}"),
        body: format!("MRKBODY{tag}"),
        sender: format!("MRKENV{tag}"),
    };
    let sender = format!("{}@sender.test", markers.sender);
    let to_alice = format!("{alice}@example.test");
    let to_bob = format!("{bob}+tagged@example.test");
    let msg_alice = message(&tag, 1, &to_alice, &sender, &markers);
    let msg_bob = message(&tag, 2, &to_bob, &sender, &markers);
    let sent_at = Instant::now();
    smtp_send(&s.dir, postfix.smtp_port, &sender, &to_alice, &msg_alice);
    smtp_send(&s.dir, postfix.smtp_port, &sender, &to_bob, &msg_bob);

    // Wait (at most 30 s) until Coffer has both.
    let mut a = Imap::login(server.imap, &alice, PW);
    let mut b = Imap::login(server.imap, &bob, PW);
    loop {
        let (na, nb) = (a.count("INBOX"), b.count("tagged"));
        if na >= 1 && nb >= 1 {
            break;
        }
        assert!(
            sent_at.elapsed() < Duration::from_secs(30),
            "after 30 s Coffer has {na} message(s) for {alice}'s INBOX and {nb} in {bob}'s \
             tagged, 1 each expected"
        );
        std::thread::sleep(Duration::from_millis(100));
    }
    eprintln!(
        "both messages in Coffer {:?} after sending",
        sent_at.elapsed()
    );

    let got_a = a.fetch_all("INBOX");
    assert_eq!(got_a.len(), 1, "alice's INBOX");
    let prefix = trace_prefix(&got_a[0].1, &msg_alice, "alice");
    assert!(
        prefix.starts_with(&format!(
            "Return-Path: <{sender}>\r\nDelivered-To: {to_alice}\r\nReceived: "
        )),
        "Coffer's trace headers: {prefix}"
    );
    assert!(prefix.contains("(Coffer) with LMTP"), "{prefix}");
    assert!(
        prefix.contains("by mta.coffer.test (Postfix) with ESMTP"),
        "Postfix's Received: {prefix}"
    );

    let got_b = b.fetch_all("tagged");
    assert_eq!(got_b.len(), 1, "bob's tagged");
    let prefix = trace_prefix(&got_b[0].1, &msg_bob, "bob");
    assert!(
        prefix.starts_with(&format!(
            "Return-Path: <{sender}>\r\nDelivered-To: {to_bob}\r\nReceived: "
        )),
        "Coffer's trace headers: {prefix}"
    );
    assert_eq!(b.count("INBOX"), 0, "user+tagged went to INBOX as well");
    assert_eq!(a.count("INBOX"), 1);

    // Postfix delivered both by the transport under test.
    let relay = if unix_socket {
        format!("[{}]", socket.display())
    } else {
        format!("[{}]:{}", lmtp_tcp.ip(), lmtp_tcp.port())
    };
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let log = postfix.log();
        let sent: Vec<&str> = log
            .lines()
            .filter(|l| l.contains("postfix/lmtp[") && l.contains("status=sent"))
            .collect();
        if sent.len() >= 2 {
            assert_eq!(sent.len(), 2, "{log}");
            for l in sent {
                assert!(
                    l.contains(&relay),
                    "delivered otherwise than by {relay}: {l}"
                );
                assert!(l.contains("Saved)"), "{l}");
            }
            break;
        }
        assert!(
            Instant::now() < deadline,
            "Postfix's log has no two LMTP deliveries:\n{log}"
        );
        std::thread::sleep(Duration::from_millis(100));
    }

    // The marker scan. Coffer's promise covers its data directory only: Postfix's queue
    // (now empty again) and its log under the scratch directory held the message or its
    // envelope in the clear, as any MTA does.
    let all = [
        markers.subject.as_str(),
        &markers.from,
        &markers.body,
        &markers.sender,
        &alice,
        &bob,
    ];
    // The scanner finds what it looks for: a marker in base64 is a hit.
    let probe = s.path("marker-probe");
    std::fs::create_dir_all(&probe).unwrap();
    std::fs::write(
        probe.join("b64"),
        format!("xx{}yy", base64(format!("..{}", markers.body).as_bytes())),
    )
    .unwrap();
    assert_eq!(
        scan(&probe, &all).0.len(),
        1,
        "the scanner misses a base64 marker"
    );

    let (hits, scanned) = scan(&s.path("coffer-data"), &all);
    assert!(scanned >= 4, "scanned only {scanned} files");
    assert!(
        hits.is_empty(),
        "markers in Coffer's data directory: {hits:?}"
    );
    eprintln!(
        "marker scan: {scanned} files under coffer-data, {} markers x 5 encodings, no hit",
        all.len()
    );
    drop((a, b));
    // Postfix stops first (its Drop), then Coffer is killed, then the scratch directory goes.
    drop(postfix);
    drop(server);
}

#[test]
fn postfix_delivers_over_the_lmtp_unix_socket() {
    run_through_postfix(true);
}

#[test]
fn postfix_delivers_over_lmtp_tcp() {
    run_through_postfix(false);
}
