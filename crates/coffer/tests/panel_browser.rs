//! The control panel in a real browser (issue 5): Debian's Chromium, headless and with
//! JavaScript disabled, driven by Selenium (tests/clients/panel_browser.py) against a real
//! `coffer serve` with a recovery key configured. The script signs in (and is refused with
//! a wrong password), switches to low security and back, changes the password, creates,
//! uses and revokes an app password, uses a recovery code on the forgot-password page and
//! reads old mail, and presses "Lock my mailbox now" while an IMAP session is connected;
//! every effect is checked over IMAP. Screenshots of the main pages go to docs/screenshots.
//!
//! Chromium, chromedriver and Selenium are installed by `scripts/test`; a missing one fails
//! this test, it never skips it. Everything runs on 127.0.0.1 with bounded waits; the
//! server and the browser are killed when the test ends, also when it fails.

mod common;

use common::{PW, Scratch, start_server_with_addrs};
use std::fs::File;
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

const SCRIPT: &str = concat!(
    env!("CARGO_MANIFEST_DIR"),
    "/tests/clients/panel_browser.py"
);
const USER: &str = "paula";
const LIMIT: Duration = Duration::from_secs(300);

fn screenshot_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../../docs/screenshots")
}

/// Fails (never skips) when something the browser test needs is missing.
fn require(program: &str, args: &[&str], what: &str) {
    let ok = Command::new(program)
        .args(args)
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .map(|s| s.success())
        .unwrap_or(false);
    assert!(
        ok,
        "`{program} {}` does not work: this test needs {what}; scripts/test installs it",
        args.join(" ")
    );
}

/// The script's process group (Python, chromedriver, Chromium), killed when dropped.
struct Group(Child);

impl Drop for Group {
    fn drop(&mut self) {
        let pgid = format!("-{}", self.0.id());
        let _ = Command::new("kill")
            .args(["-KILL", "--", &pgid])
            .stderr(Stdio::null())
            .status();
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

#[test]
fn panel_in_a_real_browser() {
    require(
        "/usr/bin/chromium",
        &["--version"],
        "Debian's chromium package",
    );
    require(
        "/usr/bin/chromedriver",
        &["--version"],
        "Debian's chromium-driver package",
    );
    require(
        "python3",
        &["-c", "import selenium"],
        "python3 with the selenium package (pip install selenium)",
    );

    let s = Scratch::init();
    s.ok(&["recovery-key", "generate", "--out", "recovery.key"], "");
    s.add_user(USER, PW);
    let server = start_server_with_addrs(&s);
    let panel = server.panel.expect("the server lists no panel listener");
    assert!(panel.ip().is_loopback() && server.imap.ip().is_loopback());

    let shots = screenshot_dir();
    std::fs::create_dir_all(&shots).unwrap();
    let out = s.path("panel_browser.stdout");
    let err = s.path("panel_browser.stderr");
    let start = Instant::now();
    let mut group = Group(
        Command::new("python3")
            .arg(SCRIPT)
            .arg(format!("https://{panel}"))
            .arg(server.imap.port().to_string())
            .args([USER, PW])
            .arg(&s.dir)
            .arg(&shots)
            .current_dir(&s.dir)
            .env("PYTHONUNBUFFERED", "1")
            .stdin(Stdio::null())
            .stdout(File::create(&out).unwrap())
            .stderr(File::create(&err).unwrap())
            .process_group(0)
            .spawn()
            .expect("start python3 panel_browser.py"),
    );
    let status = loop {
        if let Some(st) = group.0.try_wait().unwrap() {
            break Some(st);
        }
        if start.elapsed() > LIMIT {
            break None;
        }
        std::thread::sleep(Duration::from_millis(50));
    };
    drop(group);
    let output = format!(
        "--- stdout:\n{}\n--- stderr:\n{}",
        std::fs::read_to_string(&out).unwrap_or_default(),
        std::fs::read_to_string(&err).unwrap_or_default()
    );
    let status = status.unwrap_or_else(|| {
        panic!("panel_browser.py did not finish within {LIMIT:?}; killed.\n{output}")
    });
    assert!(status.success(), "panel_browser.py failed:\n{output}");
    assert!(output.contains("step: all checks passed"), "{output}");
    eprintln!(
        "{output}\npanel_browser.py passed in {:.1} s",
        start.elapsed().as_secs_f64()
    );

    for name in [
        "sign-in.png",
        "overview.png",
        "security-mode.png",
        "app-passwords.png",
    ] {
        let bytes = std::fs::read(shots.join(name))
            .unwrap_or_else(|e| panic!("screenshot {name} missing: {e}"));
        assert!(
            bytes.starts_with(b"\x89PNG\r\n\x1a\n") && bytes.len() > 2000,
            "{name} is not a real PNG"
        );
    }
    drop(server);
}
