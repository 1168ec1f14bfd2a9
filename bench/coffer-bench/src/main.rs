//! `coffer-bench`: the foundation benchmarks of Coffer.
//!
//! 1. Argon2id: the calibrated cost for this machine and the time of one derivation.
//! 2. Sealing and opening message bodies (age, X25519) for 10 KiB and 10 MiB.
//! 3. Durable appends into the embedded store, sequential and from concurrent tasks, and
//!    the delivery path that holds only the public key.
//!
//! Prints a table and writes the same figures, with the machine they ran on, to
//! `bench/results/foundation-<UTC date>-<short commit>.md`. See `bench/README.md`.
//!
//! `coffer-bench imap` measures the IMAP server instead (module [`imap`]).

mod compare;
mod harness;
mod imap;
mod machine;
mod report;
mod store;

use clap::{Args, Parser, Subcommand};
use coffer_types::{BlobId, UserId};
use coffer_vault::Pepper;
use coffer_vault::body::{open_body, seal_body};
use coffer_vault::kdf::{self, DEFAULT_MEMORY_KIB, TARGET};
use harness::Summary;
use machine::Machine;
use rand::Rng;
use report::{Report, Row};
use std::hint::black_box;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;
use store::{BoxError, StoreSettings};
use x25519_dalek::{PublicKey, StaticSecret};

/// Size of the "typical message" of every store figure and the small sealing case.
const SMALL: usize = 10 * 1024;
/// The large sealing case.
const LARGE: usize = 10 * 1024 * 1024;
const MB: f64 = 1e6;

#[derive(Parser, Debug)]
#[command(
    name = "coffer-bench",
    about = "Benchmarks of Coffer. Without a subcommand: the foundation benchmarks (Argon2id cost, \
             body sealing, durable appends, delivery)",
    long_about = None,
    args_conflicts_with_subcommands = true
)]
struct Cli {
    #[command(subcommand)]
    mode: Option<Mode>,
    #[command(flatten)]
    foundation: FoundationArgs,
}

#[derive(Subcommand, Debug)]
enum Mode {
    /// IMAP server figures against a real `coffer serve`: login latency, a big INBOX,
    /// memory per idle connection (see bench/README.md, "IMAP server")
    Imap(imap::ImapArgs),
    /// Coffer side by side with Dovecot plain and Dovecot with mail_crypt: LMTP delivery,
    /// mixed IMAP, logins, a big mailbox, idle memory, a 10 MiB FETCH (see bench/README.md,
    /// "Side by side with Dovecot")
    Compare(compare::CompareArgs),
}

/// The foundation run (no subcommand).
#[derive(Args, Debug)]
struct FoundationArgs {
    /// A tiny run of a few seconds with cheap settings, to check the harness works (the
    /// test suite runs it). Its figures are not measurements. Explicit flags still apply.
    #[arg(long)]
    smoke: bool,
    /// Directory for the results file [default: bench/results of this checkout]
    #[arg(long, value_name = "DIR")]
    out: Option<PathBuf>,
    /// Directory in which each store run makes its temporary data directory; its
    /// filesystem decides the fsync cost [default: the system temp dir, normally /tmp]
    #[arg(long, value_name = "DIR")]
    tmp_dir: Option<PathBuf>,
    /// Argon2id memory cost to calibrate, in KiB [default: 65536, Coffer's default; smoke: 8192]
    #[arg(long, value_name = "KIB")]
    kdf_memory_kib: Option<u32>,
    /// Calibration target for one derivation, in ms [default: 250, Coffer's target; smoke: 25]
    #[arg(long, value_name = "MS")]
    kdf_target_ms: Option<u64>,
    /// Derivations timed with the calibrated cost [default: 5; smoke: 2]
    #[arg(long, value_name = "N")]
    derivations: Option<usize>,
    /// Rounds per sealing case [default: 5; smoke: 2]
    #[arg(long, value_name = "N")]
    rounds: Option<usize>,
    /// Time budget per sealing case, all rounds together, in seconds [default: 2; smoke: 0.05]
    #[arg(long, value_name = "SECONDS")]
    seal_seconds: Option<f64>,
    /// Store runs, each in a fresh store [default: 5; smoke: 1]
    #[arg(long, value_name = "N")]
    store_runs: Option<usize>,
    /// Sequential appends per store run [default: 500; smoke: 10]
    #[arg(long, value_name = "N")]
    appends: Option<usize>,
    /// Appends per store run made by the concurrent tasks together [default: 500; smoke: 10]
    #[arg(long, value_name = "N")]
    concurrent_appends: Option<usize>,
    /// Concurrent appending tasks [default: 4]
    #[arg(long, value_name = "N")]
    tasks: Option<usize>,
    /// Sequential deliveries per store run [default: 500; smoke: 10]
    #[arg(long, value_name = "N")]
    deliveries: Option<usize>,
}

/// `bench/` of the checkout this binary was built from.
pub(crate) fn bench_dir() -> PathBuf {
    let manifest = Path::new(env!("CARGO_MANIFEST_DIR"));
    manifest.parent().unwrap_or(manifest).to_path_buf()
}

/// Every parameter of a run, after defaults and `--smoke`.
struct Settings {
    smoke: bool,
    out: PathBuf,
    tmp_dir: PathBuf,
    kdf_memory_kib: u32,
    kdf_target: Duration,
    derivations: usize,
    rounds: usize,
    seal_budget: Duration,
    store_runs: usize,
    store: StoreSettings,
}

impl Settings {
    fn from(cli: FoundationArgs) -> Result<Settings, BoxError> {
        let smoke = cli.smoke;
        let pick = |given: Option<usize>, full: usize, small: usize| {
            given.unwrap_or(if smoke { small } else { full })
        };
        let seal_seconds = cli.seal_seconds.unwrap_or(if smoke { 0.05 } else { 2.0 });
        if !(seal_seconds.is_finite() && seal_seconds > 0.0) {
            return Err("--seal-seconds must be a positive number".into());
        }
        let appends = pick(cli.appends, 500, 10);
        let s = Settings {
            smoke,
            out: cli.out.unwrap_or_else(|| bench_dir().join("results")),
            tmp_dir: cli.tmp_dir.unwrap_or_else(std::env::temp_dir),
            kdf_memory_kib: cli.kdf_memory_kib.unwrap_or(if smoke {
                8 * 1024
            } else {
                DEFAULT_MEMORY_KIB
            }),
            kdf_target: cli
                .kdf_target_ms
                .map(Duration::from_millis)
                .unwrap_or(if smoke {
                    Duration::from_millis(25)
                } else {
                    TARGET
                }),
            derivations: pick(cli.derivations, 5, 2),
            rounds: pick(cli.rounds, 5, 2),
            seal_budget: Duration::from_secs_f64(seal_seconds),
            store_runs: pick(cli.store_runs, 5, 1),
            store: StoreSettings {
                appends,
                concurrent_appends: pick(cli.concurrent_appends, 500, 10),
                tasks: pick(cli.tasks, 4, 4),
                deliveries: pick(cli.deliveries, 500, 10),
                fsync_samples: appends.min(100),
            },
        };
        let counts = [
            ("--derivations", s.derivations),
            ("--rounds", s.rounds),
            ("--store-runs", s.store_runs),
            ("--appends", s.store.appends),
            ("--concurrent-appends", s.store.concurrent_appends),
            ("--tasks", s.store.tasks),
            ("--deliveries", s.store.deliveries),
        ];
        if let Some((flag, _)) = counts.iter().find(|(_, n)| *n == 0) {
            return Err(format!("{flag} must be at least 1").into());
        }
        Ok(s)
    }
}

pub(crate) const WORDS: &[&str] = &[
    "the",
    "mail",
    "server",
    "seals",
    "every",
    "message",
    "before",
    "it",
    "is",
    "stored",
    "key",
    "password",
    "inbox",
    "delivery",
    "archive",
    "meeting",
    "tomorrow",
    "report",
    "draft",
    "budget",
    "attached",
    "please",
    "review",
    "thanks",
    "regards",
    "quarterly",
    "notes",
    "agenda",
];

/// A plain-text RFC 5322 message of exactly `size` bytes.
fn message(size: usize) -> Vec<u8> {
    let mut rng = rand::thread_rng();
    let mut out = format!(
        "From: Bench Sender <sender@bench.invalid>\r\nTo: bench@bench.invalid\r\n\
         Subject: coffer-bench message of {size} bytes\r\nDate: Thu, 01 Jan 2026 00:00:00 +0000\r\n\
         Message-ID: <{:016x}@bench.invalid>\r\nMIME-Version: 1.0\r\n\
         Content-Type: text/plain; charset=utf-8\r\n\r\n",
        rand::random::<u64>()
    )
    .into_bytes();
    let mut line = String::with_capacity(80);
    while out.len() < size {
        line.clear();
        while line.len() < 70 {
            if !line.is_empty() {
                line.push(' ');
            }
            line.push_str(WORDS[rng.gen_range(0..WORDS.len())]);
        }
        line.push_str("\r\n");
        out.extend_from_slice(line.as_bytes());
    }
    out.truncate(size);
    out
}

/// "1 run", "3 runs".
fn count(n: usize, what: &str) -> String {
    match (n, what.strip_suffix('y')) {
        (1, _) => format!("1 {what}"),
        (_, Some(stem)) => format!("{n} {stem}ies"),
        (_, None) => format!("{n} {what}s"),
    }
}

fn size_name(size: usize) -> String {
    if size >= 1024 * 1024 {
        format!("{} MiB", size / (1024 * 1024))
    } else {
        format!("{} KiB", size / 1024)
    }
}

fn bench_kdf(s: &Settings, rows: &mut Vec<Row>) -> Result<(), BoxError> {
    eprintln!(
        "argon2id: calibrating m={} KiB for {} ms ...",
        s.kdf_memory_kib,
        s.kdf_target.as_millis()
    );
    let (params, took) = kdf::calibrate(s.kdf_memory_kib, s.kdf_target)?;
    let cost = format!(
        "m={} KiB, t={}, p={}",
        params.memory_kib, params.time_cost, params.parallelism
    );
    rows.push(Row {
        label: "argon2id calibration".into(),
        unit: "ms",
        summary: Summary::of(&[took.as_secs_f64() * 1e3]),
        detail: format!(
            "calibrate() chose {cost} for a {} ms target; this is its own timing of that cost",
            s.kdf_target.as_millis()
        ),
    });
    eprintln!("argon2id: {cost}, {} derivations ...", s.derivations);
    let pepper = Pepper::from_bytes(rand::random());
    let salt: [u8; 16] = rand::random();
    let password = b"correct horse battery staple";
    // One untimed derivation: checks the parameters and warms the allocator.
    black_box(kdf::stretch(&pepper, password, &salt, &params)?);
    let times = harness::each(s.derivations, || {
        let out = kdf::stretch(&pepper, black_box(password), &salt, &params);
        black_box(out.expect("calibrated parameters are valid"));
    });
    let ms: Vec<f64> = times.iter().map(|t| t * 1e3).collect();
    rows.push(Row {
        label: "argon2id derivation, calibrated cost".into(),
        unit: "ms",
        summary: Summary::of(&ms),
        detail: format!("kdf::stretch with {cost}, one derivation per sample"),
    });
    Ok(())
}

fn bench_seal(s: &Settings, size: usize, rows: &mut Vec<Row>) -> Result<(), BoxError> {
    let name = size_name(size);
    eprintln!("seal/open {name} ...");
    let identity = StaticSecret::random_from_rng(rand::rngs::OsRng);
    let public = PublicKey::from(&identity);
    let user = UserId(rand::random());
    let blob = BlobId(rand::random());
    let body = message(size);

    let seal = harness::rounds(s.seal_budget, s.rounds, || {
        black_box(seal_body(&public, &user, &blob, black_box(&body)));
    });
    let sealed = seal_body(&public, &user, &blob, &body);
    if open_body(&identity, &user, &blob, &sealed).map_err(|_| "a sealed body did not open")?[..]
        != body[..]
    {
        return Err("a sealed body opened to other bytes".into());
    }
    let open = harness::rounds(s.seal_budget, s.rounds, || {
        let plain = open_body(&identity, &user, &blob, black_box(&sealed));
        black_box(plain.expect("the body opens"));
    });
    let mbps = |secs: f64| size as f64 / secs / MB;
    for (verb, r) in [("seal", seal), ("open", open)] {
        rows.push(Row {
            label: format!("{verb} throughput, {name}"),
            unit: "MB/s",
            summary: Summary::of(&r.seconds_per_call).map_decreasing(mbps),
            detail: format!(
                "body::{verb}_body, {} × {}; sealed size {} bytes",
                count(r.seconds_per_call.len(), "round"),
                count(r.calls_per_round as usize, "call"),
                sealed.len()
            ),
        });
    }
    Ok(())
}

fn bench_store(s: &Settings, rows: &mut Vec<Row>) -> Result<(), BoxError> {
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()?;
    let body = Arc::new(message(SMALL));
    let mut runs = Vec::with_capacity(s.store_runs);
    for i in 0..s.store_runs {
        eprintln!(
            "store run {}/{}: {} sequential appends, {} from {} tasks, {} deliveries ...",
            i + 1,
            s.store_runs,
            s.store.appends,
            s.store.concurrent_appends,
            s.store.tasks,
            s.store.deliveries
        );
        let run = runtime.block_on(store::run(&s.tmp_dir, &s.store, body.clone()))?;
        eprintln!(
            "  sequential {:.0} msgs/s, concurrent {:.0} msgs/s, delivery {:.0} msgs/s",
            run.sequential_rate, run.concurrent_rate, run.delivery_rate
        );
        runs.push(run);
    }
    let name = size_name(SMALL);
    let n = s.store_runs;
    let mb = |rate: f64| rate * SMALL as f64 / MB;
    let mut rate_rows = |what: &str, how: &str, rates: Vec<f64>, detail: String| {
        let rates = Summary::of(&rates);
        rows.push(Row {
            label: format!("{what} rate, {name}, {how}"),
            unit: "msgs/s",
            summary: rates,
            detail: detail.clone(),
        });
        rows.push(Row {
            label: format!("{what} throughput, {name}, {how}"),
            unit: "MB/s",
            summary: rates.map_increasing(mb),
            detail,
        });
    };
    rate_rows(
        "append",
        "sequential",
        runs.iter().map(|r| r.sequential_rate).collect(),
        format!(
            "Mail::append, {n} runs × {} appends, one at a time",
            s.store.appends
        ),
    );
    rate_rows(
        "append",
        "concurrent",
        runs.iter().map(|r| r.concurrent_rate).collect(),
        format!(
            "Mail::append, {} × {} from {}",
            count(n, "run"),
            count(s.store.concurrent_appends, "append"),
            count(s.store.tasks, "task")
        ),
    );
    rate_rows(
        "delivery",
        "sequential",
        runs.iter().map(|r| r.delivery_rate).collect(),
        format!(
            "coffer_mail::deliver (public key only), {n} runs × {} deliveries",
            s.store.deliveries
        ),
    );
    let latency_rows = |label: String, secs: Vec<f64>, what: &str| {
        let ms: Vec<f64> = secs.iter().map(|t| t * 1e3).collect();
        let p99 = harness::percentile(&harness::sorted(&ms), 99.0);
        Row {
            label,
            unit: "ms",
            summary: Summary::of(&ms),
            detail: format!("{what}; p99 {} ms", report::number(p99)),
        }
    };
    rows.push(latency_rows(
        format!("append latency, {name}, sequential"),
        runs.iter()
            .flat_map(|r| r.sequential_latencies.iter().copied())
            .collect(),
        "each sequential append above",
    ));
    rows.push(latency_rows(
        format!("fsync baseline, {name}"),
        runs.iter()
            .flat_map(|r| r.fsync_latencies.iter().copied())
            .collect(),
        "write file + fsync + rename + dir fsync, no Coffer code",
    ));
    Ok(())
}

fn run(s: &Settings) -> Result<(), BoxError> {
    std::fs::create_dir_all(&s.tmp_dir)?;
    let machine = Machine::describe(Path::new(env!("CARGO_MANIFEST_DIR")));
    let load_before = machine::load_average();
    let mut rows = Vec::new();
    bench_kdf(s, &mut rows)?;
    bench_seal(s, SMALL, &mut rows)?;
    bench_seal(s, LARGE, &mut rows)?;
    bench_store(s, &mut rows)?;

    let mode = if s.smoke {
        "smoke (tiny run checking the harness; these figures are not measurements)"
    } else {
        "full"
    };
    let notes = vec![
        ("mode".to_string(), mode.to_string()),
        (
            "load average (1/5/15 min)".to_string(),
            format!("{load_before} before, {} after", machine::load_average()),
        ),
        (
            "store directory".to_string(),
            format!(
                "{} ({})",
                s.tmp_dir.display(),
                machine::filesystem_of(&s.tmp_dir)
            ),
        ),
        (
            "parameters".to_string(),
            format!(
                "kdf memory {} KiB, target {} ms, {} derivations; {} rounds in {} s per sealing case; \
                 {} × ({} warm-up + {} sequential appends, {} appends from {} tasks, {} deliveries)",
                s.kdf_memory_kib,
                s.kdf_target.as_millis(),
                s.derivations,
                s.rounds,
                s.seal_budget.as_secs_f64(),
                count(s.store_runs, "store run"),
                store::WARM_UP_APPENDS,
                s.store.appends,
                s.store.concurrent_appends,
                s.store.tasks,
                s.store.deliveries
            ),
        ),
    ];
    let file_name = format!("foundation-{}-{}.md", machine.date, machine.commit);
    let report = Report {
        title: format!(
            "Coffer foundation benchmarks, {} {}",
            machine.date, machine.commit
        ),
        machine,
        notes,
        rows,
        footer: "MB = 10^6 bytes of message body (plaintext); KiB and MiB are powers of 1024.\n\
                 `median`, `min` and `max` are over the samples (rounds, runs or single derivations)\n\
                 described in `bench/README.md`.\n"
            .to_string(),
    };
    let text = report.markdown();
    println!("\n{text}");
    std::fs::create_dir_all(&s.out)?;
    let path = s.out.join(file_name);
    std::fs::write(&path, &text)?;
    eprintln!("wrote {}", path.display());
    Ok(())
}

fn main() -> std::process::ExitCode {
    let cli = Cli::parse();
    match cli.mode {
        Some(Mode::Imap(args)) => return imap::main(args),
        Some(Mode::Compare(args)) => return compare::main(args),
        None => {}
    }
    let settings = match Settings::from(cli.foundation) {
        Ok(s) => s,
        Err(e) => {
            eprintln!("coffer-bench: {e}");
            return std::process::ExitCode::from(2);
        }
    };
    match run(&settings) {
        Ok(()) => std::process::ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("coffer-bench: {e}");
            std::process::ExitCode::FAILURE
        }
    }
}
