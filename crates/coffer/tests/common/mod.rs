//! Helpers for tests that drive the real `coffer` binary in a scratch directory.
#![allow(dead_code)]

pub mod imap;

use std::io::Write;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::time::Duration;

pub const PW: &str = "correct horse battery";

pub struct Scratch {
    pub dir: PathBuf,
}

impl Drop for Scratch {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

impl Scratch {
    /// A fresh directory, initialised with the test-only fast KDF profile.
    pub fn init() -> Scratch {
        let s = Scratch::empty();
        let out = s.run(&["init", "--kdf-profile", "insecure-fast-for-tests"], "");
        assert!(
            out.status.success(),
            "init failed: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        // Tests run in parallel: every server listens on ports the system picks.
        let cfg = std::fs::read_to_string(s.path("coffer.toml")).unwrap();
        let cfg = cfg
            .replace("127.0.0.1:1143", "127.0.0.1:0")
            .replace("127.0.0.1:1993", "127.0.0.1:0")
            .replace("127.0.0.1:2424", "127.0.0.1:0")
            .replace("127.0.0.1:8443", "127.0.0.1:0");
        std::fs::write(s.path("coffer.toml"), cfg).unwrap();
        s
    }

    pub fn empty() -> Scratch {
        let dir = std::env::temp_dir().join(format!("coffer-cli-test-{}", rand::random::<u64>()));
        std::fs::create_dir_all(&dir).unwrap();
        Scratch { dir }
    }

    pub fn path(&self, p: &str) -> PathBuf {
        self.dir.join(p)
    }

    pub fn command(&self, args: &[&str]) -> Command {
        let mut c = Command::new(env!("CARGO_BIN_EXE_coffer"));
        c.args(args)
            .current_dir(&self.dir)
            .env_remove("COFFER_CONFIG")
            .env_remove("COFFER_LOG");
        c
    }

    /// Runs coffer with `stdin` as standard input.
    pub fn run(&self, args: &[&str], stdin: &str) -> Output {
        self.run_bytes(args, stdin.as_bytes())
    }

    pub fn run_bytes(&self, args: &[&str], stdin: &[u8]) -> Output {
        let mut child = self
            .command(args)
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .expect("spawn coffer");
        child.stdin.take().unwrap().write_all(stdin).unwrap();
        child.wait_with_output().unwrap()
    }

    /// Runs and asserts success; returns stdout.
    pub fn ok(&self, args: &[&str], stdin: &str) -> String {
        let out = self.run(args, stdin);
        assert!(
            out.status.success(),
            "coffer {args:?} failed: {}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8(out.stdout).unwrap()
    }

    /// Runs and asserts failure; returns stderr.
    pub fn fails(&self, args: &[&str], stdin: &str) -> String {
        let out = self.run(args, stdin);
        assert!(
            !out.status.success(),
            "coffer {args:?} unexpectedly succeeded: {}",
            String::from_utf8_lossy(&out.stdout)
        );
        String::from_utf8(out.stderr).unwrap()
    }

    pub fn add_user(&self, name: &str, password: &str) {
        self.ok(
            &["user", "add", name, "--password-stdin"],
            &format!("{password}\n"),
        );
    }
}

/// Every file under `dir`, recursively, with its bytes.
pub fn files(dir: &Path) -> Vec<(PathBuf, Vec<u8>)> {
    let mut out = Vec::new();
    let mut stack = vec![dir.to_path_buf()];
    while let Some(d) = stack.pop() {
        for e in std::fs::read_dir(&d).unwrap() {
            let p = e.unwrap().path();
            if p.is_dir() {
                stack.push(p);
            } else {
                let bytes = std::fs::read(&p).unwrap_or_default();
                out.push((p, bytes));
            }
        }
    }
    out
}

/// Starts `coffer serve` in `s` and waits (up to 30 s) for its "running" line.
pub fn start_server(s: &Scratch) -> Child {
    spawn_server(s).0
}

/// A running `coffer serve` with the addresses it bound; killed (and reaped) when dropped,
/// also when the test fails. Declare it after its `Scratch` so it is dropped first.
pub struct Server {
    pub child: Child,
    /// Plain IMAP (STARTTLS) listener.
    pub imap: SocketAddr,
    /// Implicit-TLS listener.
    pub imaps: SocketAddr,
    /// LMTP TCP listeners (`[lmtp] listen`), in the order the server listed them.
    pub lmtp: Vec<SocketAddr>,
    /// The LMTP unix socket (`[lmtp] socket`) if configured, as the server printed it
    /// (relative paths are relative to the scratch directory, the server's working dir).
    pub lmtp_socket: Option<PathBuf>,
    /// The HTTPS control panel (`[panel] listen`), if the server listed one.
    pub panel: Option<SocketAddr>,
}

impl Drop for Server {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Starts `coffer serve` in `s` and reads the bound addresses from its "running" line,
/// e.g. "... listening on 127.0.0.1:41234 (IMAP+STARTTLS), 127.0.0.1:40111 (IMAPS),
/// 127.0.0.1:40112 (LMTP), ./coffer-lmtp.sock (LMTP). ...".
pub fn start_server_with_addrs(s: &Scratch) -> Server {
    let (child, line) = spawn_server(s);
    // Own the child before anything can panic, so that it is killed.
    let mut server = Server {
        child,
        imap: "0.0.0.0:0".parse().unwrap(),
        imaps: "0.0.0.0:0".parse().unwrap(),
        lmtp: Vec::new(),
        lmtp_socket: None,
        panel: None,
    };
    let (mut imap, mut imaps) = (None, None);
    let list = line
        .split("listening on ")
        .nth(1)
        .and_then(|rest| rest.split(". ").next())
        .unwrap_or_else(|| panic!("no listener list in {line:?}"));
    for item in list.split(", ") {
        let (addr, kind) = item
            .rsplit_once(' ')
            .unwrap_or_else(|| panic!("unparsable listener {item:?} in {line:?}"));
        let kind = kind.trim_end_matches('.');
        let parsed: Result<SocketAddr, _> = addr.parse();
        match (kind, parsed) {
            // The unix socket is listed by its path.
            ("(LMTP)", Err(_)) => server.lmtp_socket = Some(PathBuf::from(addr)),
            (_, Err(e)) => panic!("bad address {addr:?} in {line:?}: {e}"),
            ("(IMAPS)", Ok(a)) => imaps = imaps.or(Some(a)),
            ("(IMAP+STARTTLS)", Ok(a)) => imap = imap.or(Some(a)),
            ("(LMTP)", Ok(a)) => server.lmtp.push(a),
            ("(panel)", Ok(a)) => server.panel = server.panel.or(Some(a)),
            _ => {}
        }
    }
    server.imap = imap.unwrap_or_else(|| panic!("no IMAP+STARTTLS listener in {line:?}"));
    server.imaps = imaps.unwrap_or_else(|| panic!("no IMAPS listener in {line:?}"));
    server
}

/// Spawns `coffer serve`, waits for its "running" line and returns it; standard error
/// keeps being drained so the server never blocks on it.
fn spawn_server(s: &Scratch) -> (Child, String) {
    let mut child = s
        .command(&["serve"])
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    // Wait for the "running" line.
    let stderr = child.stderr.take().unwrap();
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        use std::io::BufRead;
        for line in std::io::BufReader::new(stderr)
            .lines()
            .map_while(Result::ok)
        {
            if line.contains("running") {
                let _ = tx.send(line);
            }
        }
    });
    match rx.recv_timeout(Duration::from_secs(30)) {
        Ok(line) => (child, line),
        Err(_) => {
            let _ = child.kill();
            let _ = child.wait();
            panic!("coffer serve did not start");
        }
    }
}
