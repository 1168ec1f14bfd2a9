//! Real IMAP clients against a real `coffer serve`: Python's imapclient (CONDSTORE,
//! QRESYNC, MOVE, IDLE), mbsync (a 200-message two-way sync) and neomutt (driven in tmux).
//!
//! The clients are installed by `scripts/test`; a missing one fails its test, it never
//! skips it. Every external program runs with a time limit, every server and tmux is
//! stopped when its test ends, also when it fails, and all traffic stays on 127.0.0.1.

mod common;

use common::{PW, Scratch, Server, start_server_with_addrs};
use std::collections::{BTreeMap, BTreeSet};
use std::fs::File;
use std::path::{Path, PathBuf};
use std::process::{Command, ExitStatus, Stdio};
use std::time::{Duration, Instant};

const CLIENT_DIR: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/clients");

fn script(name: &str) -> String {
    format!("{CLIENT_DIR}/{name}")
}

/// Fails (never skips) when a client program is missing.
fn require(program: &str, check: &[&str], install: &str) {
    let ok = Command::new(program)
        .args(check)
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .map(|s| s.success())
        .unwrap_or(false);
    assert!(
        ok,
        "`{program} {}` does not work: this test needs {install}; scripts/test installs it",
        check.join(" ")
    );
}

fn require_python_imapclient() {
    require(
        "python3",
        &["-c", "import imapclient"],
        "python3 with the imapclient package (pip install imapclient)",
    );
}

struct Ran {
    status: ExitStatus,
    stdout: String,
    stderr: String,
}

impl Ran {
    fn both(&self) -> String {
        format!("--- stdout:\n{}\n--- stderr:\n{}", self.stdout, self.stderr)
    }
}

/// Runs `cmd` with output to files in `dir` (so no pipe can fill up) and standard input
/// from `stdin`; kills it and fails after `limit`.
fn run_bounded(cmd: &mut Command, dir: &Path, name: &str, stdin: &[u8], limit: Duration) -> Ran {
    let out_path = dir.join(format!("{name}.stdout"));
    let err_path = dir.join(format!("{name}.stderr"));
    let in_path = dir.join(format!("{name}.stdin"));
    std::fs::write(&in_path, stdin).unwrap();
    let mut child = cmd
        .stdin(File::open(&in_path).unwrap())
        .stdout(File::create(&out_path).unwrap())
        .stderr(File::create(&err_path).unwrap())
        .spawn()
        .unwrap_or_else(|e| panic!("cannot start {name} ({cmd:?}): {e}"));
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
    let ran = Ran {
        status: status.unwrap_or_default(),
        stdout: String::from_utf8_lossy(&std::fs::read(&out_path).unwrap()).into_owned(),
        stderr: String::from_utf8_lossy(&std::fs::read(&err_path).unwrap()).into_owned(),
    };
    assert!(
        status.is_some(),
        "{name} did not finish within {limit:?}; killed.\n{}",
        tail(&ran.both(), 120)
    );
    ran
}

/// Message bytes as text, for readable assertion failures.
fn text(bytes: &[u8]) -> String {
    String::from_utf8_lossy(bytes).into_owned()
}

/// The last `n` lines of `text`.
fn tail(text: &str, n: usize) -> String {
    let lines: Vec<&str> = text.lines().collect();
    lines[lines.len().saturating_sub(n)..].join("\n")
}

fn cert(s: &Scratch) -> String {
    s.path("coffer-data/tls/cert.pem").display().to_string()
}

/// Runs tests/clients/imap_tool.py (Python's imaplib over implicit TLS) against `server`.
fn imap_tool(s: &Scratch, server: &Server, user: &str, args: &[&str], stdin: &[u8]) -> String {
    let port = server.imaps.port().to_string();
    let cert = cert(s);
    let mut cmd = Command::new("python3");
    cmd.arg(script("imap_tool.py"))
        .args(["127.0.0.1", &port, user, PW, &cert])
        .args(args)
        .current_dir(&s.dir);
    let ran = run_bounded(
        &mut cmd,
        &s.dir,
        &format!("imap_tool-{}", args[0]),
        stdin,
        Duration::from_secs(120),
    );
    assert!(
        ran.status.success(),
        "imap_tool.py {args:?} failed:\n{}",
        tail(&ran.both(), 60)
    );
    ran.stdout
}

/// Appends `messages` (bytes with their IMAP flags) to `mailbox`; returns their UIDs.
fn append(
    s: &Scratch,
    server: &Server,
    user: &str,
    mailbox: &str,
    messages: &[(Vec<u8>, Vec<&str>)],
) -> Vec<u32> {
    let mut input = Vec::new();
    for (bytes, flags) in messages {
        let flags = if flags.is_empty() {
            "-".to_string()
        } else {
            flags.join(" ")
        };
        input.extend_from_slice(format!("{flags}\t{}\n", bytes.len()).as_bytes());
        input.extend_from_slice(bytes);
    }
    let out = imap_tool(s, server, user, &["append", mailbox], &input);
    let uids: Vec<u32> = out
        .lines()
        .filter_map(|l| l.strip_prefix("APPENDUID "))
        .map(|l| l.split(' ').nth(1).unwrap().parse().unwrap())
        .collect();
    assert_eq!(uids.len(), messages.len(), "APPENDUIDs: {out}");
    uids
}

#[derive(Clone, Debug, PartialEq, Eq)]
struct ServerMessage {
    uid: u32,
    flags: BTreeSet<String>,
    message_id: String,
    bytes: Vec<u8>,
}

#[derive(Debug, PartialEq, Eq)]
struct Dump {
    mailboxes: BTreeMap<String, Vec<ServerMessage>>,
    counts: BTreeMap<String, usize>,
}

impl Dump {
    fn mailbox(&self, name: &str) -> &[ServerMessage] {
        self.mailboxes.get(name).map(Vec::as_slice).unwrap_or(&[])
    }
}

fn hex_decode(hex: &str) -> Vec<u8> {
    assert!(hex.len().is_multiple_of(2), "odd hex length");
    (0..hex.len())
        .step_by(2)
        .map(|i| u8::from_str_radix(&hex[i..i + 2], 16).unwrap())
        .collect()
}

/// Every mailbox of `user` as the server has it, read with Python's imaplib.
fn dump(s: &Scratch, server: &Server, user: &str) -> Dump {
    let out = imap_tool(s, server, user, &["dump"], b"");
    let mut d = Dump {
        mailboxes: BTreeMap::new(),
        counts: BTreeMap::new(),
    };
    for line in out.lines() {
        let f: Vec<&str> = line.split('\t').collect();
        if f[0] == "COUNT" {
            d.counts.insert(f[1].to_string(), f[2].parse().unwrap());
            d.mailboxes.entry(f[1].to_string()).or_default();
            continue;
        }
        assert_eq!(f.len(), 5, "dump line {line:?}");
        d.mailboxes
            .entry(f[0].to_string())
            .or_default()
            .push(ServerMessage {
                uid: f[1].parse().unwrap(),
                flags: f[2]
                    .split(' ')
                    .filter(|x| *x != "-")
                    .map(String::from)
                    .collect(),
                message_id: f[3].to_string(),
                bytes: hex_decode(f[4]),
            });
    }
    d
}

fn flag_set(flags: &[&str]) -> BTreeSet<String> {
    flags.iter().map(|f| f.to_string()).collect()
}

// ------------------------------------------------------------------------------------
// a. imapclient: CONDSTORE, QRESYNC, MOVE, IDLE
// ------------------------------------------------------------------------------------

#[test]
fn python_imapclient_idle_condstore_qresync_move() {
    require_python_imapclient();
    let s = Scratch::init();
    let server = start_server_with_addrs(&s);
    s.add_user("ivy", PW);
    let port = server.imaps.port().to_string();
    let cert = cert(&s);
    let mut cmd = Command::new("python3");
    cmd.arg(script("imapclient_check.py"))
        .args(["127.0.0.1", &port, "ivy", PW, &cert])
        .current_dir(&s.dir);
    let ran = run_bounded(&mut cmd, &s.dir, "imapclient", b"", Duration::from_secs(90));
    assert!(
        ran.status.success(),
        "imapclient_check.py failed ({}):\n{}",
        ran.status,
        ran.both()
    );
    assert!(
        ran.stdout.contains("imapclient checks: OK"),
        "{}",
        ran.both()
    );
    eprintln!("{}", ran.stdout);
}

// ------------------------------------------------------------------------------------
// b. mbsync: 200 messages down, local changes up, then nothing to do
// ------------------------------------------------------------------------------------

fn mbsync_message(i: u32) -> Vec<u8> {
    format!(
        "From: Sender {i} <sender{i}@example.org>\r\n\
         To: mia@example.org\r\n\
         Subject: Sync test {i:03}\r\n\
         Message-ID: <mbsync-{i}@example.org>\r\n\
         Date: Mon, 02 Nov 2026 {:02}:{:02}:00 +0000\r\n\
         MIME-Version: 1.0\r\n\
         Content-Type: text/plain; charset=us-ascii\r\n\
         \r\n\
         Message {i} of the mbsync test.\r\n\
         {}\r\n",
        i / 60,
        i % 60,
        "x".repeat((i as usize * 7) % 300)
    )
    .into_bytes()
}

/// Flags the server starts with: \Seen every 2nd, \Flagged every 5th, \Answered every 7th.
fn initial_flags(i: u32) -> Vec<&'static str> {
    let mut f = Vec::new();
    if i.is_multiple_of(2) {
        f.push("\\Seen");
    }
    if i.is_multiple_of(5) {
        f.push("\\Flagged");
    }
    if i.is_multiple_of(7) {
        f.push("\\Answered");
    }
    f
}

/// Flags after the local changes: messages 1..=40 get new ones, the rest keep theirs.
fn changed_flags(i: u32) -> Vec<&'static str> {
    if i > 40 {
        return initial_flags(i);
    }
    let mut f = Vec::new();
    if i.is_multiple_of(3) {
        f.push("\\Seen");
    }
    if i.is_multiple_of(4) {
        f.push("\\Flagged");
    }
    if i.is_multiple_of(6) {
        f.push("\\Answered");
    }
    f
}

/// Maildir info letters for IMAP flags, in the alphabetical order Maildir wants.
fn maildir_letters(flags: &[&str]) -> String {
    let mut l: Vec<char> = flags
        .iter()
        .map(|f| match *f {
            "\\Seen" => 'S',
            "\\Flagged" => 'F',
            "\\Answered" => 'R',
            "\\Draft" => 'D',
            "\\Deleted" => 'T',
            other => panic!("no Maildir letter for {other}"),
        })
        .collect();
    l.sort();
    l.into_iter().collect()
}

fn local_message(tag: &str, n: u32) -> Vec<u8> {
    format!(
        "From: Local Writer <local@example.org>\r\n\
         To: mia@example.org\r\n\
         Subject: {tag} {n}\r\n\
         Message-ID: <{tag}-{n}@example.org>\r\n\
         Date: Tue, 03 Nov 2026 08:0{n}:00 +0000\r\n\
         \r\n\
         Written locally: {tag} {n}.\r\n"
    )
    .into_bytes()
}

/// A Maildir message file: its path, Maildir info letters (after ":2,") and bytes.
struct LocalMessage {
    path: PathBuf,
    letters: String,
    bytes: Vec<u8>,
}

fn maildir_messages(dir: &Path) -> Vec<LocalMessage> {
    let mut out = Vec::new();
    for sub in ["cur", "new"] {
        let Ok(entries) = std::fs::read_dir(dir.join(sub)) else {
            continue;
        };
        for e in entries {
            let path = e.unwrap().path();
            let name = path.file_name().unwrap().to_string_lossy().into_owned();
            let letters = name
                .split_once(":2,")
                .map(|(_, l)| l.to_string())
                .unwrap_or_default();
            let bytes = std::fs::read(&path).unwrap();
            out.push(LocalMessage {
                path,
                letters,
                bytes,
            });
        }
    }
    out
}

fn header<'a>(bytes: &'a [u8], name: &str) -> Option<&'a str> {
    let text = std::str::from_utf8(bytes).ok()?;
    let head = text
        .split("\r\n\r\n")
        .next()
        .unwrap()
        .split("\n\n")
        .next()
        .unwrap();
    head.lines().find_map(|l| {
        let (k, v) = l.split_once(':')?;
        k.eq_ignore_ascii_case(name).then(|| v.trim())
    })
}

/// The mbsync test's message number from a Message-ID "<mbsync-N@example.org>".
fn mbsync_number(bytes: &[u8]) -> Option<u32> {
    header(bytes, "Message-ID")?
        .strip_prefix("<mbsync-")?
        .strip_suffix("@example.org>")?
        .parse()
        .ok()
}

/// LF line ends (as mbsync writes Maildir files) back to the CRLF the server stores.
fn lf_to_crlf(bytes: &[u8]) -> Vec<u8> {
    let mut out = Vec::with_capacity(bytes.len() + bytes.len() / 20);
    for (k, &b) in bytes.iter().enumerate() {
        if b == b'\n' && (k == 0 || bytes[k - 1] != b'\r') {
            out.push(b'\r');
        }
        out.push(b);
    }
    out
}

/// mbsync adds an "X-TUID:" header to messages it uploads; everything else must be the
/// bytes that were written locally.
fn without_x_tuid(bytes: &[u8]) -> Vec<u8> {
    let text = String::from_utf8_lossy(bytes);
    let mut out = String::new();
    let mut in_header = true;
    for line in text.split_inclusive('\n') {
        if in_header && (line == "\r\n" || line == "\n") {
            in_header = false;
        }
        if in_header && line.to_ascii_lowercase().starts_with("x-tuid:") {
            continue;
        }
        out.push_str(line);
    }
    out.into_bytes()
}

/// The IMAP commands mbsync sent, from its `-Dn` log (">>> 7 UID STORE ...").
fn mbsync_commands(log: &str) -> Vec<String> {
    log.lines()
        .filter_map(|l| l.split_once(">>> ").map(|(_, c)| c))
        .map(|c| {
            c.split_once(' ')
                .map(|(_, rest)| rest)
                .unwrap_or(c)
                .to_string()
        })
        .collect()
}

struct Mbsync<'a> {
    s: &'a Scratch,
    config: PathBuf,
    runs: u32,
}

impl Mbsync<'_> {
    /// Runs `mbsync -a` with network debugging (the whole IMAP exchange) into a log.
    fn run(&mut self) -> String {
        self.runs += 1;
        let mut cmd = Command::new("mbsync");
        cmd.arg("-c")
            .arg(&self.config)
            .args(["-a", "-Dn"])
            .current_dir(&self.s.dir)
            .env("HOME", &self.s.dir);
        let name = format!("mbsync-{}", self.runs);
        let ran = run_bounded(&mut cmd, &self.s.dir, &name, b"", Duration::from_secs(180));
        let log = format!("{}{}", ran.stdout, ran.stderr);
        assert!(
            ran.status.success(),
            "mbsync run {} failed ({}); the end of its IMAP exchange:\n{}",
            self.runs,
            ran.status,
            tail(&log, 80)
        );
        log
    }
}

#[test]
fn mbsync_syncs_two_hundred_messages_down_and_back_with_flags() {
    require("mbsync", &["--version"], "mbsync (Debian package isync)");
    require_python_imapclient();
    let s = Scratch::init();
    let server = start_server_with_addrs(&s);
    s.add_user("mia", PW);

    let originals: Vec<(Vec<u8>, Vec<&str>)> = (1..=200)
        .map(|i| (mbsync_message(i), initial_flags(i)))
        .collect();
    let uids = append(&s, &server, "mia", "INBOX", &originals);
    assert_eq!(uids, (1..=200).collect::<Vec<u32>>());

    // mbsync 1.5 renamed SSLType to TLSType.
    let version = Command::new("mbsync").arg("--version").output().unwrap();
    let version = String::from_utf8_lossy(&version.stdout).into_owned();
    let mut v = version
        .split_whitespace()
        .nth(1)
        .unwrap_or("1.4")
        .split('.')
        .map(|x| x.parse::<u32>().unwrap_or(0));
    let (major, minor) = (v.next().unwrap_or(1), v.next().unwrap_or(4));
    let tls_keyword = if (major, minor) >= (1, 5) {
        "TLSType"
    } else {
        "SSLType"
    };
    let inbox = s.path("maildir-inbox");
    let root = s.path("maildir");
    std::fs::create_dir_all(&root).unwrap();
    let config = s.path("mbsyncrc");
    std::fs::write(
        &config,
        format!(
            "IMAPAccount coffer\n\
             Host 127.0.0.1\n\
             Port {port}\n\
             {tls_keyword} IMAPS\n\
             CertificateFile {cert}\n\
             User mia\n\
             Pass \"{PW}\"\n\
             Timeout 60\n\
             \n\
             IMAPStore coffer-far\n\
             Account coffer\n\
             \n\
             MaildirStore coffer-near\n\
             Path {root}/\n\
             Inbox {inbox}\n\
             SubFolders Verbatim\n\
             \n\
             Channel coffer\n\
             Far :coffer-far:\n\
             Near :coffer-near:\n\
             Patterns *\n\
             Create Both\n\
             SyncState *\n",
            port = server.imaps.port(),
            cert = cert(&s),
            root = root.display(),
            inbox = inbox.display(),
        ),
    )
    .unwrap();
    let mut mbsync = Mbsync {
        s: &s,
        config,
        runs: 0,
    };

    // 1. Down: 200 messages with their flags in the file names, bytes intact.
    let log = mbsync.run();
    let local = maildir_messages(&inbox);
    assert_eq!(
        local.len(),
        200,
        "local INBOX has {} messages after the first sync; mbsync's exchange:\n{}",
        local.len(),
        tail(&log, 60)
    );
    let mut seen = BTreeSet::new();
    for m in &local {
        let i = mbsync_number(&m.bytes)
            .unwrap_or_else(|| panic!("{} is not one of the appended messages", m.path.display()));
        assert!(seen.insert(i), "message {i} synced twice");
        assert_eq!(
            m.letters,
            maildir_letters(&initial_flags(i)),
            "{}: Maildir flags for message {i} with IMAP flags {:?}",
            m.path.display(),
            initial_flags(i)
        );
        // mbsync writes LF line ends and adds an X-TUID header to what it copies.
        assert_eq!(
            text(&without_x_tuid(&lf_to_crlf(&m.bytes))),
            text(&mbsync_message(i)),
            "{}: bytes differ from what was appended",
            m.path.display()
        );
    }
    for mailbox in ["Archive", "Drafts", "Junk", "Sent", "Trash"] {
        assert!(
            root.join(mailbox).join("cur").is_dir(),
            "mailbox {mailbox} was not created locally"
        );
    }

    // 2. Local changes: new flags on messages 1..=40, three new messages, a new folder.
    for m in &local {
        let i = mbsync_number(&m.bytes).unwrap();
        if i > 40 {
            continue;
        }
        let name = m.path.file_name().unwrap().to_string_lossy().into_owned();
        let base = name.split_once(":2,").map(|(b, _)| b).unwrap_or(&name);
        let target = inbox
            .join("cur")
            .join(format!("{base}:2,{}", maildir_letters(&changed_flags(i))));
        std::fs::rename(&m.path, target).unwrap();
    }
    let new_local = [
        (
            "new",
            "1800000000.local1.coffer-test",
            local_message("local", 1),
        ),
        (
            "new",
            "1800000001.local2.coffer-test",
            local_message("local", 2),
        ),
        (
            "cur",
            "1800000002.local3.coffer-test:2,FS",
            local_message("local", 3),
        ),
    ];
    for (sub, name, bytes) in &new_local {
        std::fs::write(inbox.join(sub).join(name), bytes).unwrap();
    }
    let projects = root.join("Projects");
    for sub in ["cur", "new", "tmp"] {
        std::fs::create_dir_all(projects.join(sub)).unwrap();
    }
    for n in 1..=2 {
        std::fs::write(
            projects
                .join("new")
                .join(format!("180000001{n}.project{n}.coffer-test")),
            local_message("project", n),
        )
        .unwrap();
    }

    // 3. Up: the server has the new flags, the 3 new messages and the new folder.
    let log2 = mbsync.run();
    let d = dump(&s, &server, "mia");
    let context = || format!("mbsync's exchange (end):\n{}", tail(&log2, 80));
    assert_eq!(
        d.counts.get("INBOX"),
        Some(&203),
        "server INBOX count; {}",
        context()
    );
    let server_inbox = d.mailbox("INBOX");
    assert_eq!(server_inbox.len(), 203, "{}", context());
    for m in server_inbox {
        if let Some(i) = mbsync_number(&m.bytes) {
            assert_eq!(
                m.flags,
                flag_set(&changed_flags(i)),
                "server flags of message {i} (UID {}) after the local change from {:?}; {}",
                m.uid,
                initial_flags(i),
                context()
            );
            assert_eq!(
                text(&m.bytes),
                text(&mbsync_message(i)),
                "bytes of message {i}"
            );
        }
    }
    for (n, expected_flags) in [(1, vec![]), (2, vec![]), (3, vec!["\\Flagged", "\\Seen"])] {
        let id = format!("<local-{n}@example.org>");
        let m = server_inbox
            .iter()
            .find(|m| m.message_id == id)
            .unwrap_or_else(|| {
                panic!("new local message {id} is not on the server; {}", context())
            });
        assert_eq!(m.flags, flag_set(&expected_flags), "flags of {id}");
        assert_eq!(
            text(&without_x_tuid(&m.bytes)),
            text(&local_message("local", n)),
            "bytes of {id} on the server"
        );
    }
    assert_eq!(
        d.counts.get("Projects"),
        Some(&2),
        "the local folder Projects on the server; {}",
        context()
    );
    let mut project_ids: Vec<&str> = d
        .mailbox("Projects")
        .iter()
        .map(|m| m.message_id.as_str())
        .collect();
    project_ids.sort();
    assert_eq!(
        project_ids,
        ["<project-1@example.org>", "<project-2@example.org>"]
    );
    for m in d.mailbox("Projects") {
        let n = if m.message_id.contains("-1@") { 1 } else { 2 };
        assert_eq!(
            text(&without_x_tuid(&m.bytes)),
            text(&local_message("project", n)),
            "bytes of {} on the server",
            m.message_id
        );
    }
    assert_eq!(maildir_messages(&inbox).len(), 203);
    assert_eq!(maildir_messages(&projects).len(), 2);

    // 4. A third run has nothing to do: no changing command, same server, same files.
    let names = |dir: &Path| -> BTreeSet<PathBuf> {
        common::files(dir)
            .into_iter()
            .map(|(p, _)| p)
            .filter(|p| !p.to_string_lossy().contains(".mbsyncstate"))
            .collect()
    };
    let (inbox_before, root_before) = (names(&inbox), names(&root));
    let log3 = mbsync.run();
    let changing: Vec<String> = mbsync_commands(&log3)
        .into_iter()
        .filter(|c| {
            let mut words = c.split(' ');
            let mut verb = words.next().unwrap_or("");
            if verb == "UID" {
                verb = words.next().unwrap_or("");
            }
            [
                "APPEND", "STORE", "CREATE", "DELETE", "EXPUNGE", "MOVE", "COPY", "RENAME",
            ]
            .contains(&verb)
        })
        .collect();
    assert!(
        changing.is_empty(),
        "the third mbsync run still changed things: {changing:?}\n{}",
        tail(&log3, 60)
    );
    assert_eq!(
        dump(&s, &server, "mia"),
        d,
        "the server changed on the third run"
    );
    assert_eq!(names(&inbox), inbox_before, "local INBOX files changed");
    assert_eq!(names(&root), root_before, "local folders changed");
}

// ------------------------------------------------------------------------------------
// c. neomutt in tmux
// ------------------------------------------------------------------------------------

/// A tmux server on its own socket in the scratch directory; killed when dropped.
struct Tmux {
    socket: PathBuf,
    home: PathBuf,
}

impl Tmux {
    fn cmd(&self) -> Command {
        let mut c = Command::new("tmux");
        c.arg("-S")
            .arg(&self.socket)
            .arg("-f")
            .arg("/dev/null")
            .env("HOME", &self.home)
            .env_remove("TMUX")
            .stdin(Stdio::null());
        c
    }

    fn run(&self, args: &[&str]) -> std::process::Output {
        let out = self.cmd().args(args).output().unwrap();
        assert!(
            out.status.success(),
            "tmux {args:?}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        out
    }

    fn screen(&self) -> String {
        let out = self
            .cmd()
            .args(["capture-pane", "-p", "-t", "neomutt"])
            .output()
            .unwrap();
        String::from_utf8_lossy(&out.stdout).into_owned()
    }

    fn alive(&self) -> bool {
        self.cmd()
            .args(["has-session", "-t", "neomutt"])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .status()
            .map(|s| s.success())
            .unwrap_or(false)
    }

    fn keys(&self, keys: &[&str]) {
        let mut args = vec!["send-keys", "-t", "neomutt"];
        args.extend_from_slice(keys);
        self.run(&args);
    }

    /// Polls the screen until `done` holds; fails after `limit` with the last screen.
    fn wait_for(&self, what: &str, limit: Duration, done: impl Fn(&str) -> bool) -> String {
        let start = Instant::now();
        loop {
            let screen = self.screen();
            if done(&screen) {
                return screen;
            }
            assert!(
                start.elapsed() < limit && self.alive(),
                "neomutt: {what} did not show within {limit:?} (alive: {}); the screen:\n{screen}",
                self.alive()
            );
            std::thread::sleep(Duration::from_millis(100));
        }
    }
}

impl Drop for Tmux {
    fn drop(&mut self) {
        let _ = self
            .cmd()
            .arg("kill-server")
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .status();
    }
}

fn neomutt_message(n: u32) -> Vec<u8> {
    format!(
        "From: Sender {n:02} <sender{n:02}@example.org>\r\n\
         To: nora@example.org\r\n\
         Subject: Coffer neomutt check {n:02}\r\n\
         Message-ID: <neomutt-{n}@example.org>\r\n\
         Date: Mon, 02 Nov 2026 09:{n:02}:00 +0000\r\n\
         MIME-Version: 1.0\r\n\
         Content-Type: text/plain; charset=us-ascii\r\n\
         \r\n\
         This is the body of message {n:02}.\r\n\
         It has a second line, marker {}.\r\n",
        n * 1111
    )
    .into_bytes()
}

fn neomutt_flags(n: u32) -> Vec<&'static str> {
    match n {
        3 => vec!["\\Flagged"],
        5 => vec!["\\Seen"],
        8 => vec!["\\Seen", "\\Answered"],
        _ => vec![],
    }
}

/// The %Z column neomutt shows for those flags: N new, r replied, ! flagged.
fn neomutt_status(n: u32) -> Vec<&'static str> {
    match n {
        3 => vec!["N", "!"],
        5 => vec![],
        8 => vec!["r"],
        _ => vec!["N"],
    }
}

#[test]
fn neomutt_reads_the_same_mailbox() {
    require("neomutt", &["-v"], "neomutt (Debian package neomutt)");
    require("tmux", &["-V"], "tmux (Debian package tmux)");
    require_python_imapclient();
    let s = Scratch::init();
    let server = start_server_with_addrs(&s);
    s.add_user("nora", PW);
    let messages: Vec<(Vec<u8>, Vec<&str>)> = (1..=20)
        .map(|n| (neomutt_message(n), neomutt_flags(n)))
        .collect();
    append(&s, &server, "nora", "INBOX", &messages);

    let home = s.path("home");
    std::fs::create_dir_all(&home).unwrap();
    let muttrc = s.path("muttrc");
    std::fs::write(
        &muttrc,
        format!(
            "set folder=\"imaps://nora@127.0.0.1:{port}/\"\n\
             set spoolfile=\"+INBOX\"\n\
             set imap_user=\"nora\"\n\
             set imap_pass=\"{PW}\"\n\
             set ssl_ca_certificates_file=\"{cert}\"\n\
             set certificate_file=\"{home}/certificates\"\n\
             set ssl_force_tls=yes\n\
             set header_cache=\"\"\n\
             set message_cachedir=\"\"\n\
             set imap_check_subscribed=no\n\
             set mail_check_stats=no\n\
             set sort=date\n\
             set index_format=\"%4C [%Z] %s\"\n\
             set help=no\n\
             set wait_key=no\n\
             set quit=yes\n\
             set move=no\n\
             set mark_old=no\n\
             set timeout=1\n\
             set tmpdir=\"{home}\"\n",
            port = server.imaps.port(),
            cert = cert(&s),
            home = home.display(),
        ),
    )
    .unwrap();

    let tmux = Tmux {
        socket: s.path("tmux.sock"),
        home: home.clone(),
    };
    let command = format!(
        "neomutt -n -F '{}' 2>'{}'",
        muttrc.display(),
        s.path("neomutt.stderr").display()
    );
    tmux.run(&[
        "new-session",
        "-d",
        "-s",
        "neomutt",
        "-x",
        "160",
        "-y",
        "50",
        &command,
    ]);

    // The index lists every message with its flags.
    let subject = |n: u32| format!("Coffer neomutt check {n:02}");
    let index = tmux.wait_for("the INBOX index", Duration::from_secs(30), |screen| {
        screen.contains("Msgs:20") && (1..=20).all(|n| screen.contains(&subject(n)))
    });
    for n in 1..=20 {
        let row = index
            .lines()
            .find(|l| l.contains(&subject(n)))
            .unwrap_or_else(|| panic!("no index row for message {n}:\n{index}"));
        let status = row
            .split_once('[')
            .and_then(|(_, r)| r.split_once(']'))
            .map(|(z, _)| z.split_whitespace().collect::<Vec<_>>())
            .unwrap_or_else(|| panic!("no [%Z] column in {row:?}"));
        assert_eq!(
            status,
            neomutt_status(n),
            "index row {row:?} for IMAP flags {:?}",
            neomutt_flags(n)
        );
        let number: u32 = row.split_whitespace().next().unwrap().parse().unwrap();
        assert_eq!(number, n, "sorted by date: {row:?}");
    }

    // Open message 7: its headers and body are shown.
    tmux.keys(&["7", "Enter"]);
    std::thread::sleep(Duration::from_millis(300));
    tmux.keys(&["Enter"]);
    let pager = tmux.wait_for("message 07", Duration::from_secs(20), |screen| {
        screen.contains("This is the body of message 07.")
    });
    for expected in [
        "Subject: Coffer neomutt check 07",
        "From: Sender 07 <sender07@example.org>",
        "It has a second line, marker 7777.",
    ] {
        assert!(
            pager.contains(expected),
            "pager lacks {expected:?}:\n{pager}"
        );
    }

    // Back to the index, quit; neomutt writes the \Seen flag of message 7 back.
    tmux.keys(&["q"]);
    tmux.wait_for("the index again", Duration::from_secs(10), |screen| {
        screen.contains("Msgs:20") && !screen.contains("This is the body of message 07.")
    });
    tmux.keys(&["q"]);
    let start = Instant::now();
    while tmux.alive() {
        assert!(
            start.elapsed() < Duration::from_secs(15),
            "neomutt did not quit:\n{}",
            tmux.screen()
        );
        std::thread::sleep(Duration::from_millis(100));
    }

    let d = dump(&s, &server, "nora");
    let inbox = d.mailbox("INBOX");
    assert_eq!(inbox.len(), 20);
    for m in inbox {
        let n = m.uid;
        let mut expected = flag_set(&neomutt_flags(n));
        if n == 7 {
            expected.insert("\\Seen".into());
        }
        assert_eq!(
            m.flags, expected,
            "server flags of UID {n} after neomutt read message 7"
        );
        assert_eq!(
            text(&m.bytes),
            text(&neomutt_message(n)),
            "bytes of UID {n}"
        );
    }
}
