//! The harness must not rot: a `--smoke` run of the foundation benchmarks and one of
//! `coffer-bench imap` (against a real `coffer serve`) exit 0 and write every figure.

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{SystemTime, UNIX_EPOCH};

/// Every figure of the results table, by its label (bench/README.md explains each one).
const LABELS: &[&str] = &[
    "argon2id calibration",
    "argon2id derivation, calibrated cost",
    "seal throughput, 10 KiB",
    "open throughput, 10 KiB",
    "seal throughput, 10 MiB",
    "open throughput, 10 MiB",
    "append rate, 10 KiB, sequential",
    "append throughput, 10 KiB, sequential",
    "append rate, 10 KiB, concurrent",
    "append throughput, 10 KiB, concurrent",
    "delivery rate, 10 KiB, sequential",
    "delivery throughput, 10 KiB, sequential",
    "append latency, 10 KiB, sequential",
    "fsync baseline, 10 KiB",
];

/// Facts about the machine every results file records.
const FACTS: &[&str] = &[
    "- date (UTC): ",
    "- git commit: ",
    "- nproc: ",
    "- memory: ",
    "- CPU: ",
    "- rustc: ",
];

/// Every figure of the IMAP results table that must be positive.
const IMAP_LABELS: &[&str] = &[
    "cold login, LOGIN round trip",
    "re-login while unlocked, LOGIN round trip",
    "re-login while unlocked, whole connection",
    "mailbox fill through the library",
    "SELECT INBOX",
    "UID FETCH 1:* (FLAGS)",
    "UID SEARCH UNSEEN",
    "FETCH ENVELOPE, last 50",
    "FETCH ENVELOPE, last 32",
    "UID FETCH BODY[], one message",
];

/// IMAP figures that are differences or CPU shares: with the tiny smoke counts they may
/// be zero (or, for memory, even negative), so they only have to be numbers.
const IMAP_DIFFERENCES: &[&str] = &[
    "memory per connection, big INBOX selected",
    "memory per idle connection, plain",
    "server CPU while connections idle, plain",
    "memory per idle connection, TLS",
    "server CPU while connections idle, TLS",
];

struct Scratch(PathBuf);

impl Drop for Scratch {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

impl Scratch {
    fn new(what: &str) -> Scratch {
        let nanos = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .unwrap()
            .as_nanos();
        Scratch(std::env::temp_dir().join(format!(
            "coffer-bench-{what}-{}-{nanos}",
            std::process::id()
        )))
    }
}

/// Runs coffer-bench with `args`, expects success and exactly one results file named
/// `<prefix>-*.md` in `out_dir`; returns its text.
fn run_bench(args: &[&std::ffi::OsStr], out_dir: &Path, prefix: &str) -> String {
    let output = Command::new(env!("CARGO_BIN_EXE_coffer-bench"))
        .args(args)
        .output()
        .expect("coffer-bench runs");
    assert!(
        output.status.success(),
        "coffer-bench {args:?} failed ({}):\n{}",
        output.status,
        String::from_utf8_lossy(&output.stderr)
    );
    let files: Vec<PathBuf> = std::fs::read_dir(out_dir)
        .expect("the results directory exists")
        .map(|e| e.unwrap().path())
        .collect();
    assert_eq!(files.len(), 1, "one results file: {files:?}");
    let name = files[0].file_name().unwrap().to_string_lossy().into_owned();
    assert!(
        name.starts_with(&format!("{prefix}-")) && name.ends_with(".md"),
        "{name}"
    );
    std::fs::read_to_string(&files[0]).unwrap()
}

/// The cells of the row `label`: "", label, median, min, max, unit, samples, detail, "".
fn row<'a>(text: &'a str, label: &str) -> Vec<&'a str> {
    let prefix = format!("| {label} |");
    let row = text
        .lines()
        .find(|l| l.starts_with(&prefix))
        .unwrap_or_else(|| panic!("no row {label:?} in:\n{text}"));
    row.split('|').map(str::trim).collect()
}

/// Median, min and max of the row `label`.
fn figures(text: &str, label: &str) -> [f64; 3] {
    let cells = row(text, label);
    [(2, "median"), (3, "min"), (4, "max")].map(|(i, what)| {
        cells[i].parse().unwrap_or_else(|_| {
            panic!("{what} of {label:?} is not a number: {}", cells.join(" | "))
        })
    })
}

/// Every machine fact is there, every figure in `positive` is positive, every figure in
/// `numbers` is a finite number, and the file says it is a smoke run.
fn check_results(text: &str, positive: &[&str], numbers: &[&str]) {
    for fact in FACTS {
        let line = text.lines().find(|l| l.starts_with(fact));
        let value = line.map(|l| l[fact.len()..].trim()).unwrap_or_default();
        assert!(!value.is_empty(), "missing {fact:?} in:\n{text}");
    }
    for label in positive {
        for v in figures(text, label) {
            assert!(
                v.is_finite() && v > 0.0,
                "{label:?} is not positive:\n{text}"
            );
        }
    }
    for label in numbers {
        for v in figures(text, label) {
            assert!(v.is_finite(), "{label:?} is not a finite number:\n{text}");
        }
    }
    // The smoke run says it is one, so its figures are never mistaken for measurements.
    assert!(text.contains("- mode: smoke"), "{text}");
}

/// Nothing left behind in the directory where the runs made their data directories.
fn assert_empty(dir: &Path) {
    let left: Vec<_> = std::fs::read_dir(dir).unwrap().collect();
    assert!(
        left.is_empty(),
        "left behind in {}: {left:?}",
        dir.display()
    );
}

#[test]
fn smoke_run_writes_every_figure() {
    let scratch = Scratch::new("smoke");
    let out_dir = scratch.0.join("results");
    let work_dir = scratch.0.join("work");
    let text = run_bench(
        &[
            "--smoke".as_ref(),
            "--out".as_ref(),
            out_dir.as_os_str(),
            "--tmp-dir".as_ref(),
            work_dir.as_os_str(),
        ],
        &out_dir,
        "foundation",
    );
    check_results(&text, LABELS, &[]);
    // The store's temporary data directories are removed.
    assert_empty(&work_dir);
}

/// The `coffer` binary of the same build as this test (target/<profile>/coffer), built
/// with `cargo build -p coffer` if it is missing. `COFFER_BENCH_COFFER` overrides it.
fn coffer_binary() -> PathBuf {
    if let Some(path) = std::env::var_os("COFFER_BENCH_COFFER") {
        return PathBuf::from(path);
    }
    // This test runs as target/<profile>/deps/smoke-<hash>.
    let exe = std::env::current_exe().expect("the test knows its own path");
    let profile_dir = exe
        .parent()
        .and_then(Path::parent)
        .expect("the test runs from target/<profile>/deps");
    let coffer = profile_dir.join("coffer");
    if coffer.is_file() {
        return coffer;
    }
    let workspace = Path::new(env!("CARGO_MANIFEST_DIR")).join("../..");
    // The build goes where this test's own build went (target/<profile>).
    let target_dir = profile_dir.parent().expect("target/<profile> has a parent");
    let mut build = Command::new(option_env!("CARGO").unwrap_or("cargo"));
    build
        .current_dir(&workspace)
        .args(["build", "-p", "coffer", "--target-dir"])
        .arg(target_dir);
    if profile_dir.file_name().is_some_and(|n| n == "release") {
        build.arg("--release");
    }
    let status = build.status().expect("cargo runs");
    assert!(status.success(), "cargo build -p coffer failed ({status})");
    assert!(
        coffer.is_file(),
        "cargo build -p coffer made no {}",
        coffer.display()
    );
    coffer
}

#[test]
fn imap_smoke_run_writes_every_figure() {
    let coffer = coffer_binary();
    let scratch = Scratch::new("imap-smoke");
    let out_dir = scratch.0.join("results");
    let work_dir = scratch.0.join("work");
    let text = run_bench(
        &[
            "imap".as_ref(),
            "--smoke".as_ref(),
            "--coffer".as_ref(),
            coffer.as_os_str(),
            "--out".as_ref(),
            out_dir.as_os_str(),
            "--tmp-dir".as_ref(),
            work_dir.as_os_str(),
        ],
        &out_dir,
        "imap",
    );
    check_results(&text, IMAP_LABELS, IMAP_DIFFERENCES);
    // The scratch installation (and with it the server's data) is removed.
    assert_empty(&work_dir);
}

/// Figures of the compare table that must be positive for every server in it.
const COMPARE_LABELS: &[&str] = &[
    "(3) LMTP delivery, 10 KiB, rate",
    "(3) LMTP delivery, 10 KiB, throughput",
    "(3) LMTP delivery, 1 MiB, rate",
    "(3) LMTP delivery, 1 MiB, throughput",
    "(1) mixed IMAP with login churn",
    "(2) mixed IMAP, sessions kept open",
    "(5) cold login, LOGIN round trip, p50",
    "(5) cold login, LOGIN round trip, p99",
    "(5) re-login, LOGIN round trip, p50",
    "(5) re-login, LOGIN round trip, p99",
    "(4) 50 messages: SELECT INBOX",
    "(4) 50 messages: UID FETCH 1:* (FLAGS)",
    "(4) 50 messages: UID SEARCH UNSEEN",
    "(4) 50 messages: FETCH ENVELOPE, last 50",
    "(4) 50 messages: UID FETCH BODY[], one message",
    "(7) FETCH BODY[] of a 10 MiB message",
];

/// Differences of memory: with 10 connections they only have to be numbers.
const COMPARE_DIFFERENCES: &[&str] = &[
    "(6) memory per idle connection, RSS",
    "(6) memory per idle connection, PSS",
];

/// Dovecot with LMTP must be installed and the test must run as root (it starts Dovecot,
/// which switches to an unprivileged mail user): a missing yardstick fails the test.
fn require_dovecot() {
    let installed = [
        "/usr/sbin/dovecot",
        "/usr/lib/dovecot/imap",
        "/usr/lib/dovecot/lmtp",
    ]
    .iter()
    .all(|p| Path::new(p).is_file());
    assert!(
        installed,
        "Dovecot with IMAP and LMTP is not installed: `apt-get install dovecot-imapd \
         dovecot-lmtpd` (scripts/test installs them)"
    );
    assert!(
        rustix::process::geteuid().is_root(),
        "the side-by-side smoke run starts Dovecot and must run as root (as scripts/test does)"
    );
}

/// The leading number of a cell such as "123 (100–140)".
fn cell_number(cell: &str, label: &str, column: &str) -> f64 {
    let first = cell.split_whitespace().next().unwrap_or("");
    first
        .parse()
        .unwrap_or_else(|_| panic!("{column} of {label:?} is not a number: {cell:?}"))
}

#[test]
fn compare_smoke_run_writes_every_figure() {
    let coffer = coffer_binary();
    let scratch = Scratch::new("compare-smoke");
    let out_dir = scratch.0.join("results");
    let work_dir = scratch.0.join("work");
    require_dovecot();
    let servers = "coffer,dovecot,dovecot-crypt";
    let text = run_bench(
        &[
            "compare".as_ref(),
            "--smoke".as_ref(),
            "--servers".as_ref(),
            servers.as_ref(),
            "--coffer".as_ref(),
            coffer.as_os_str(),
            "--out".as_ref(),
            out_dir.as_os_str(),
            "--tmp-dir".as_ref(),
            work_dir.as_os_str(),
        ],
        &out_dir,
        "compare",
    );
    for fact in FACTS {
        assert!(
            text.lines().any(|l| l.starts_with(fact)),
            "missing {fact:?}"
        );
    }
    assert!(text.contains("- mode: smoke"), "{text}");
    assert!(
        !text.contains("FAILED") && !text.contains("## Failures"),
        "{text}"
    );
    let columns = ["Coffer", "Dovecot plain", "Dovecot mail_crypt"];
    let header = row(&text, "figure");
    for label in COMPARE_LABELS.iter().chain(COMPARE_DIFFERENCES) {
        let cells = row(&text, label);
        for column in &columns {
            let i = header
                .iter()
                .position(|h| h == column)
                .unwrap_or_else(|| panic!("no column {column:?} in {header:?}"));
            let v = cell_number(cells[i], label, column);
            if COMPARE_DIFFERENCES.contains(label) {
                assert!(v.is_finite(), "{label:?} / {column}: {v}");
            } else {
                assert!(
                    v.is_finite() && v > 0.0,
                    "{label:?} / {column}: {v}\n{text}"
                );
            }
        }
    }
    assert!(
        header.contains(&"Coffer ÷ Dovecot mail_crypt"),
        "{header:?}"
    );
    // Every server's scratch directory (Coffer's installation, Dovecot's Maildirs) is gone.
    assert_empty(&work_dir);
}
