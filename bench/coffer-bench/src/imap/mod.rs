//! `coffer-bench imap`: figures of the IMAP server, measured against a real `coffer serve`
//! child process over loopback.
//!
//! 1. Login: the first LOGIN of a user (Argon2id) and re-logins while another session
//!    keeps the keyring open (p50, p99 of the LOGIN round trip).
//! 2. A big INBOX (100,000 messages by default, filled through the libraries before the
//!    server starts): SELECT, UID FETCH 1:* (FLAGS), UID SEARCH UNSEEN, FETCH ENVELOPE of
//!    the last 50, FETCH BODY[] of one message.
//! 3. Resident memory per idle connection (LOGIN, SELECT, IDLE), plain and TLS, and the
//!    server's CPU use while they idle.
//!
//! See the "IMAP server" section of `bench/README.md`.

pub(crate) mod client;
mod fill;
pub(crate) mod server;

use crate::harness::{self, Summary};
use crate::machine::{self, Machine};
use crate::report::{self, Report, Row};
use crate::store::BoxError;
use clap::Args;
use client::{Client, Connect, quoted};
use server::{INSECURE_PROFILE, Installation, Server};
use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant};

/// The server's default limits (coffer_imap::server::ImapConfig); not in coffer.toml yet.
const SERVER_MAX_PER_ADDRESS: usize = 100;
const SERVER_MAX_PER_USER: usize = 50;

const PASSWORD: &str = "correct horse battery staple bench";
const BIG_USER: &str = "bench";

/// Targets from the IMAP issue.
const TARGET_RELOGIN_P50_MS: f64 = 2.0;
const TARGET_SELECT_MS: f64 = 200.0;
const TARGET_FETCH_FLAGS_MS: f64 = 500.0;
const TARGET_IDLE_KIB: f64 = 64.0;

#[derive(Args, Debug)]
pub struct ImapArgs {
    /// A tiny run of a few seconds (insecure KDF, 500 messages, 20 connections) checking
    /// that the harness works; the test suite runs it. Explicit flags still apply.
    #[arg(long)]
    smoke: bool,
    /// The coffer binary to run [default: target/release/coffer of this checkout]
    #[arg(long, value_name = "PATH")]
    coffer: Option<PathBuf>,
    /// Directory for the results file [default: bench/results of this checkout]
    #[arg(long, value_name = "DIR")]
    out: Option<PathBuf>,
    /// Directory in which the scratch installation is made [default: the system temp
    /// dir, normally /tmp]
    #[arg(long, value_name = "DIR")]
    tmp_dir: Option<PathBuf>,
    /// Argon2id profile given to `coffer init`: calibrated or insecure-fast-for-tests
    /// [default: calibrated; smoke: insecure-fast-for-tests]
    #[arg(long, value_name = "PROFILE")]
    kdf_profile: Option<String>,
    /// Re-logins timed while another session keeps the keyring open [default: 200; smoke: 20]
    #[arg(long, value_name = "N")]
    logins: Option<usize>,
    /// Messages in the big INBOX [default: 100000; smoke: 500]
    #[arg(long, value_name = "N")]
    messages: Option<usize>,
    /// Runs of each command on the big INBOX [default: 5; smoke: 2]
    #[arg(long, value_name = "N")]
    runs: Option<usize>,
    /// Idle plain connections for the memory figure [default: 2000; smoke: 20]
    #[arg(long, value_name = "K")]
    connections: Option<usize>,
    /// Idle TLS (IMAPS) connections for the memory figure; 0 skips it [default: as --connections]
    #[arg(long, value_name = "K")]
    tls_connections: Option<usize>,
    /// Connections holding the big INBOX selected, for its memory figure; 0 skips it
    /// [default: 10; smoke: 2]
    #[arg(long, value_name = "N")]
    selected_connections: Option<usize>,
    /// Idle connections per user; the server allows 50 [default: 40]
    #[arg(long, value_name = "N")]
    per_user: Option<usize>,
    /// Idle connections per source address 127.0.x.y; the server allows 100 [default: 80]
    #[arg(long, value_name = "N")]
    per_address: Option<usize>,
    /// Seconds over which the server's CPU use is measured while the connections idle
    /// [default: 5; smoke: 0.5]
    #[arg(long, value_name = "SECONDS")]
    idle_cpu_seconds: Option<f64>,
}

/// Every parameter of a run, after defaults and `--smoke`.
struct Settings {
    smoke: bool,
    coffer: PathBuf,
    out: PathBuf,
    tmp_dir: PathBuf,
    kdf_profile: String,
    logins: usize,
    messages: usize,
    runs: usize,
    connections: usize,
    tls_connections: usize,
    selected_connections: usize,
    per_user: usize,
    per_address: usize,
    idle_cpu: Duration,
    /// Pause before reading VmRSS after the connections are open.
    settle: Duration,
    /// Limit for each connect, read and write.
    timeout: Duration,
}

impl Settings {
    fn from(a: ImapArgs) -> Result<Settings, BoxError> {
        let smoke = a.smoke;
        let pick = |given: Option<usize>, full: usize, small: usize| {
            given.unwrap_or(if smoke { small } else { full })
        };
        let connections = pick(a.connections, 2000, 20);
        let idle_cpu = a.idle_cpu_seconds.unwrap_or(if smoke { 0.5 } else { 5.0 });
        if !(idle_cpu.is_finite() && idle_cpu > 0.0) {
            return Err("--idle-cpu-seconds must be a positive number".into());
        }
        let s = Settings {
            smoke,
            coffer: a
                .coffer
                .unwrap_or_else(|| crate::bench_dir().join("../target/release/coffer")),
            out: a.out.unwrap_or_else(|| crate::bench_dir().join("results")),
            tmp_dir: a.tmp_dir.unwrap_or_else(std::env::temp_dir),
            kdf_profile: a.kdf_profile.unwrap_or_else(|| {
                if smoke {
                    INSECURE_PROFILE
                } else {
                    "calibrated"
                }
                .to_string()
            }),
            logins: pick(a.logins, 200, 20),
            messages: pick(a.messages, 100_000, 500),
            runs: pick(a.runs, 5, 2),
            connections,
            tls_connections: a.tls_connections.unwrap_or(connections),
            selected_connections: pick(a.selected_connections, 10, 2),
            per_user: pick(a.per_user, 40, 40),
            per_address: pick(a.per_address, 80, 80),
            idle_cpu: Duration::from_secs_f64(idle_cpu),
            settle: Duration::from_millis(if smoke { 200 } else { 1000 }),
            timeout: Duration::from_secs(120),
        };
        for (flag, n) in [
            ("--logins", s.logins),
            ("--runs", s.runs),
            ("--connections", s.connections),
            ("--per-user", s.per_user),
            ("--per-address", s.per_address),
        ] {
            if n == 0 {
                return Err(format!("{flag} must be at least 1").into());
            }
        }
        if s.messages < 2 {
            return Err("--messages must be at least 2".into());
        }
        if s.per_user > SERVER_MAX_PER_USER || s.per_address > SERVER_MAX_PER_ADDRESS {
            return Err(format!(
                "the server allows {SERVER_MAX_PER_USER} connections per user and \
                 {SERVER_MAX_PER_ADDRESS} per address; --per-user and --per-address must stay within"
            )
            .into());
        }
        // The keeper session of the big user plus the selected connections.
        if s.selected_connections + 1 > SERVER_MAX_PER_USER {
            return Err(format!(
                "--selected-connections must be below {SERVER_MAX_PER_USER}, the server's limit per user"
            )
            .into());
        }
        Ok(s)
    }
}

/// Source address of the `n`-th group of idle connections: 127.0.0.2, 127.0.0.3, ...
/// (127.0.0.1 is left to the other connections).
fn source_address(n: usize) -> IpAddr {
    let n = n + 2;
    IpAddr::V4(Ipv4Addr::new(127, (n >> 16) as u8, (n >> 8) as u8, n as u8))
}

fn idle_user(n: usize) -> String {
    format!("idle{n:04}")
}

fn ms(d: Duration) -> f64 {
    d.as_secs_f64() * 1e3
}

/// Raises this process's open-files limit to at least `needed` (the server inherits it).
/// Returns "soft/hard" as set.
fn raise_nofile(needed: u64) -> Result<String, BoxError> {
    use rustix::process::{Resource, getrlimit, setrlimit};
    let mut limit = getrlimit(Resource::Nofile);
    let hard = limit.maximum;
    if limit.current.is_some_and(|soft| soft < needed) {
        if hard.is_some_and(|h| h < needed) {
            return Err(format!(
                "{needed} open files are needed but the hard limit is {}; raise it (ulimit -Hn) or use fewer --connections",
                hard.unwrap_or(0)
            )
            .into());
        }
        limit.current = Some(needed);
        setrlimit(Resource::Nofile, limit)
            .map_err(|e| format!("raising RLIMIT_NOFILE to {needed}: {e}"))?;
    }
    let show = |v: Option<u64>| v.map_or("unlimited".to_string(), |v| v.to_string());
    Ok(format!("{}/{}", show(limit.current), show(hard)))
}

/// Connection settings for a client of `server`.
struct Dial<'a> {
    settings: &'a Settings,
    tls: Option<&'a Arc<rustls::ClientConfig>>,
}

impl Dial<'_> {
    fn connect(&self, server: &Server, source: Option<IpAddr>) -> Result<Client, BoxError> {
        let addr: SocketAddr = if self.tls.is_some() {
            server.imaps
        } else {
            server.imap
        };
        Client::connect(&Connect {
            addr,
            source,
            tls: self.tls,
            timeout: self.settings.timeout,
        })
    }
}

fn login_command(user: &str) -> String {
    format!("LOGIN {} {}", quoted(user), quoted(PASSWORD))
}

/// Everything measured, before it becomes rows.
#[derive(Default)]
struct Figures {
    cold_logins_ms: Vec<f64>,
    relogin_ms: Vec<f64>,
    relogin_cycle_ms: Vec<f64>,
    select_ms: Vec<f64>,
    fetch_flags_ms: Vec<f64>,
    fetch_flags_bytes: usize,
    search_unseen_ms: Vec<f64>,
    envelope50_ms: Vec<f64>,
    envelope32_ms: Vec<f64>,
    body_ms: Vec<f64>,
    body_len: usize,
    selected_memory: Option<Memory>,
    idle_plain: Option<Idle>,
    idle_tls: Option<Idle>,
    server_nofile: String,
}

struct Memory {
    connections: usize,
    before_kib: u64,
    after_kib: u64,
}

impl Memory {
    fn per_connection_kib(&self) -> f64 {
        (self.after_kib as f64 - self.before_kib as f64) / self.connections as f64
    }
}

struct Idle {
    memory: Memory,
    users: usize,
    addresses: usize,
    open_took: Duration,
    cpu_percent: f64,
    threads_before: u64,
    threads_after: u64,
}

/// Phase 1 and 2 on one server: cold login, re-logins, then the big INBOX.
fn login_and_mailbox(
    s: &Settings,
    inst: &Installation,
    unseen: usize,
    f: &mut Figures,
) -> Result<(), BoxError> {
    let mut server = inst.start()?;
    f.server_nofile = server.nofile_limit();
    let dial = Dial {
        settings: s,
        tls: None,
    };
    let local = Some(IpAddr::V4(Ipv4Addr::LOCALHOST));

    // The keeper: its LOGIN is the first since the server started, so it runs Argon2id;
    // afterwards it keeps the keyring open.
    eprintln!("login: cold login, then {} re-logins ...", s.logins);
    let mut keeper = dial.connect(&server, local)?;
    let cold = keeper.run(&login_command(BIG_USER), |_| {})?;
    f.cold_logins_ms.push(ms(cold));
    for _ in 0..s.logins {
        let start = Instant::now();
        let mut c = dial.connect(&server, local)?;
        let took = c.run(&login_command(BIG_USER), |_| {})?;
        c.run("LOGOUT", |_| {})?;
        f.relogin_cycle_ms.push(ms(start.elapsed()));
        f.relogin_ms.push(ms(took));
    }
    server.check_alive()?;

    let m = s.messages;
    eprintln!(
        "mailbox: {} runs of SELECT, UID FETCH FLAGS, UID SEARCH UNSEEN, FETCH ENVELOPE, FETCH BODY[] on {m} messages ...",
        s.runs
    );
    // A seen message in the middle of the mailbox (index i is UID i + 1).
    let mut body_index = m / 2;
    if body_index.is_multiple_of(fill::UNSEEN_EVERY) {
        body_index += 1;
    }
    let body_index = body_index.min(m - 1);
    let expected_body = fill::message(body_index);
    let expected_seen = m - unseen;
    for run in 0..s.runs {
        let mut exists = None;
        let took = keeper.run("SELECT INBOX", |l| {
            if let Some(n) = l
                .strip_prefix(b"* ")
                .and_then(|r| std::str::from_utf8(r).ok())
                .and_then(|r| r.trim_end().strip_suffix(" EXISTS"))
            {
                exists = n.parse::<usize>().ok();
            }
        })?;
        if exists != Some(m) {
            return Err(format!("SELECT INBOX said {exists:?} EXISTS, expected {m}").into());
        }
        f.select_ms.push(ms(took));

        let (mut fetched, mut seen, mut bytes) = (0usize, 0usize, 0usize);
        let took = keeper.run("UID FETCH 1:* (FLAGS)", |l| {
            bytes += l.len();
            if l.starts_with(b"* ") && l.windows(7).any(|w| w == b" FETCH ") {
                fetched += 1;
                if l.windows(5).any(|w| w == b"\\Seen") {
                    seen += 1;
                }
            }
        })?;
        if fetched != m || seen != expected_seen {
            return Err(format!(
                "UID FETCH 1:* (FLAGS) gave {fetched} messages, {seen} seen; expected {m}, {expected_seen}"
            )
            .into());
        }
        f.fetch_flags_ms.push(ms(took));
        f.fetch_flags_bytes = bytes;

        let mut hits = None;
        let took = keeper.run("UID SEARCH UNSEEN", |l| {
            if let Some(rest) = l.strip_prefix(b"* SEARCH") {
                hits = Some(rest.split(|c| *c == b' ').filter(|w| !w.is_empty()).count());
            }
        })?;
        if hits != Some(unseen) {
            return Err(format!("UID SEARCH UNSEEN found {hits:?}, expected {unseen}").into());
        }
        f.search_unseen_ms.push(ms(took));

        for (last, out) in [(50, &mut f.envelope50_ms), (32, &mut f.envelope32_ms)] {
            let first = m.saturating_sub(last) + 1;
            let want = m - first + 1;
            let (mut got, mut last_subject_ok) = (0usize, false);
            let marker = format!("#{}\"", m - 1);
            let took = keeper.run(&format!("FETCH {first}:{m} (ENVELOPE)"), |l| {
                if l.starts_with(b"* ") && l.windows(10).any(|w| w == b"(ENVELOPE ") {
                    got += 1;
                    if l.starts_with(format!("* {m} FETCH").as_bytes()) {
                        last_subject_ok = l.windows(marker.len()).any(|w| w == marker.as_bytes());
                    }
                }
            })?;
            if got != want || !last_subject_ok {
                return Err(format!(
                    "FETCH {first}:{m} (ENVELOPE) gave {got} envelopes (expected {want}); \
                     last subject found: {last_subject_ok}"
                )
                .into());
            }
            out.push(ms(took));
        }

        let mut body = None;
        let took = keeper.run(&format!("UID FETCH {} (BODY[])", body_index + 1), |l| {
            body = literal_after(l, b"BODY[] {").map(<[u8]>::to_vec);
        })?;
        if body.as_deref() != Some(&expected_body[..]) {
            return Err(format!(
                "UID FETCH {} (BODY[]) did not return the appended bytes",
                body_index + 1
            )
            .into());
        }
        f.body_ms.push(ms(took));
        f.body_len = expected_body.len();
        eprintln!(
            "  run {}: SELECT {:.1} ms, FETCH FLAGS {:.1} ms, SEARCH UNSEEN {:.1} ms, ENVELOPE 50 {:.1} ms",
            run + 1,
            f.select_ms[run],
            f.fetch_flags_ms[run],
            f.search_unseen_ms[run],
            f.envelope50_ms[run]
        );
    }

    // Memory held by sessions that have the big INBOX selected (the keeper has it
    // selected already, so it is part of "before").
    if s.selected_connections > 0 {
        eprintln!(
            "memory: {} connections selecting the {m}-message INBOX ...",
            s.selected_connections
        );
        std::thread::sleep(s.settle);
        let before_kib = server.vm_rss_kib()?;
        let mut held = Vec::with_capacity(s.selected_connections);
        for _ in 0..s.selected_connections {
            let mut c = dial.connect(&server, local)?;
            c.run(&login_command(BIG_USER), |_| {})?;
            c.run("SELECT INBOX", |_| {})?;
            held.push(c);
        }
        std::thread::sleep(s.settle);
        server.check_alive()?;
        let after_kib = server.vm_rss_kib()?;
        f.selected_memory = Some(Memory {
            connections: held.len(),
            before_kib,
            after_kib,
        });
    }
    keeper.run("LOGOUT", |_| {})?;
    server.check_alive()?;
    server.stop();
    Ok(())
}

/// The bytes of the literal that follows `marker` ("BODY[] {") in a response line.
fn literal_after<'a>(line: &'a [u8], marker: &[u8]) -> Option<&'a [u8]> {
    let at = line.windows(marker.len()).position(|w| w == marker)? + marker.len();
    let close = at + line[at..].iter().position(|c| *c == b'}')?;
    let len: usize = std::str::from_utf8(&line[at..close]).ok()?.parse().ok()?;
    let start = close + 3; // "}\r\n"
    line.get(start..start + len)
}

/// Phase 3 on a fresh server: `k` connections LOGIN, SELECT INBOX and IDLE.
fn idle_connections(
    s: &Settings,
    inst: &Installation,
    k: usize,
    tls: Option<&Arc<rustls::ClientConfig>>,
    f: &mut Figures,
) -> Result<Idle, BoxError> {
    let kind = if tls.is_some() {
        "TLS (IMAPS)"
    } else {
        "plain"
    };
    let mut server = inst.start()?;
    let dial = Dial { settings: s, tls };
    let users = k.div_ceil(s.per_user);
    let addresses = k.div_ceil(s.per_address);
    // Warm-up: one LOGIN per user opens every keyring (the first LOGIN of each is a cold
    // login, Argon2id) and the keyrings then stay open for the grace period, so that the
    // difference below is the connections' own memory.
    eprintln!("idle {kind}: {users} cold logins, then {k} connections ...");
    let local = Some(IpAddr::V4(Ipv4Addr::LOCALHOST));
    for u in 0..users {
        let mut c = dial.connect(&server, local)?;
        let took = c.run(&login_command(&idle_user(u)), |_| {})?;
        c.run("LOGOUT", |_| {})?;
        f.cold_logins_ms.push(ms(took));
    }
    std::thread::sleep(s.settle);
    let threads_before = server.threads()?;
    let before_kib = server.vm_rss_kib()?;
    let start = Instant::now();
    let mut held = Vec::with_capacity(k);
    for i in 0..k {
        let source = Some(source_address(i / s.per_address));
        let mut c = dial.connect(&server, source)?;
        c.run(&login_command(&idle_user(i / s.per_user)), |_| {})?;
        c.run("SELECT INBOX", |_| {})?;
        c.start_idle()?;
        held.push(c);
        if (i + 1) % 500 == 0 {
            eprintln!("  {} idling", i + 1);
        }
    }
    let open_took = start.elapsed();
    std::thread::sleep(s.settle);
    server.check_alive()?;
    let after_kib = server.vm_rss_kib()?;
    let threads_after = server.threads()?;
    let cpu_start = server.cpu_time()?;
    let wall = Instant::now();
    std::thread::sleep(s.idle_cpu);
    let cpu = server.cpu_time()?.saturating_sub(cpu_start);
    let cpu_percent = 100.0 * cpu.as_secs_f64() / wall.elapsed().as_secs_f64();
    server.check_alive()?;
    drop(held);
    server.stop();
    Ok(Idle {
        memory: Memory {
            connections: k,
            before_kib,
            after_kib,
        },
        users,
        addresses,
        open_took,
        cpu_percent,
        threads_before,
        threads_after,
    })
}

fn plural(n: usize, one: &str, many: &str) -> String {
    format!("{n} {}", if n == 1 { one } else { many })
}

fn met(ok: bool) -> &'static str {
    if ok { "met" } else { "MISSED" }
}

fn p(values: &[f64], pct: f64) -> f64 {
    harness::percentile(&harness::sorted(values), pct)
}

fn rows(s: &Settings, f: &Figures, filled: &fill::Filled, kdf: &str) -> Vec<Row> {
    let n = report::number;
    let m = s.messages;
    let mut rows = Vec::new();
    let mut row = |label: &str, unit: &'static str, values: &[f64], detail: String| {
        rows.push(Row {
            label: label.to_string(),
            unit,
            summary: Summary::of(values),
            detail,
        })
    };
    row(
        "cold login, LOGIN round trip",
        "ms",
        &f.cold_logins_ms,
        format!(
            "first LOGIN of a user after the server started (keyring closed): one Argon2id at {kdf}; \
             LOGIN sent → tagged OK; p99 {} ms",
            n(p(&f.cold_logins_ms, 99.0))
        ),
    );
    let p50 = p(&f.relogin_ms, 50.0);
    row(
        "re-login while unlocked, LOGIN round trip",
        "ms",
        &f.relogin_ms,
        format!(
            "new connection, LOGIN while another session keeps the keyring open; LOGIN sent → \
             tagged OK; p50 {} ms, p99 {} ms; target p50 < {TARGET_RELOGIN_P50_MS} ms: {}",
            n(p50),
            n(p(&f.relogin_ms, 99.0)),
            met(p50 < TARGET_RELOGIN_P50_MS)
        ),
    );
    row(
        "re-login while unlocked, whole connection",
        "ms",
        &f.relogin_cycle_ms,
        format!(
            "TCP connect, greeting, LOGIN, LOGOUT until its tagged OK; p99 {} ms",
            n(p(&f.relogin_cycle_ms, 99.0))
        ),
    );
    let fill_rate = m as f64 / filled.took.as_secs_f64();
    row(
        "mailbox fill through the library",
        "msgs/s",
        &[fill_rate],
        format!(
            "{m} messages ({} MB) in {} s before the server starts: sealed as Mail::append, \
             blobs by Store::put_blob (fsync'd), rows by Store::append, 1000 per transaction",
            n(filled.bytes as f64 / 1e6),
            n(filled.took.as_secs_f64())
        ),
    );
    let median = |v: &[f64]| Summary::of(v).median;
    row(
        "SELECT INBOX",
        "ms",
        &f.select_ms,
        format!(
            "{m} messages; SELECT sent → tagged OK; target < {TARGET_SELECT_MS} ms: {}",
            met(median(&f.select_ms) < TARGET_SELECT_MS)
        ),
    );
    row(
        "UID FETCH 1:* (FLAGS)",
        "ms",
        &f.fetch_flags_ms,
        format!(
            "{m} responses ({} MB) read until the tagged OK; target < {TARGET_FETCH_FLAGS_MS} ms: {}",
            n(f.fetch_flags_bytes as f64 / 1e6),
            met(median(&f.fetch_flags_ms) < TARGET_FETCH_FLAGS_MS)
        ),
    );
    row(
        "UID SEARCH UNSEEN",
        "ms",
        &f.search_unseen_ms,
        format!("{m} messages, {} unseen (every 10th)", filled.unseen),
    );
    row(
        "FETCH ENVELOPE, last 50",
        "ms",
        &f.envelope50_ms,
        format!(
            "FETCH {}:{m} (ENVELOPE) by sequence number",
            m.saturating_sub(50) + 1
        ),
    );
    row(
        "FETCH ENVELOPE, last 32",
        "ms",
        &f.envelope32_ms,
        format!(
            "FETCH {}:{m} (ENVELOPE), for comparison with the row above (see bench/README.md)",
            m.saturating_sub(32) + 1
        ),
    );
    row(
        "UID FETCH BODY[], one message",
        "ms",
        &f.body_ms,
        format!(
            "one message of {} bytes, already \\Seen (so no flag write); bytes checked",
            f.body_len
        ),
    );
    if let Some(mem) = &f.selected_memory {
        row(
            "memory per connection, big INBOX selected",
            "KiB",
            &[mem.per_connection_kib()],
            format!(
                "{} connections LOGIN and SELECT the {m}-message INBOX; server VmRSS {} KiB \
                 before, {} KiB after; rough (freed SELECT buffers are reused)",
                mem.connections, mem.before_kib, mem.after_kib
            ),
        );
    }
    for (idle, label, how) in [
        (
            &f.idle_plain,
            "plain",
            "plain TCP to the IMAP+STARTTLS port without STARTTLS (plaintext login on loopback)",
        ),
        (&f.idle_tls, "TLS", "TLS to the IMAPS port (rustls client)"),
    ] {
        let Some(idle) = idle else { continue };
        let per = idle.memory.per_connection_kib();
        rows.push(Row {
            label: format!("memory per idle connection, {label}"),
            unit: "KiB",
            summary: Summary::of(&[per]),
            detail: format!(
                "{} connections, {how}: LOGIN, SELECT INBOX (empty), IDLE; {}, {}; server VmRSS {} KiB before, {} KiB after; target < {TARGET_IDLE_KIB} KiB: {}",
                idle.memory.connections,
                plural(idle.users, "user", "users"),
                plural(idle.addresses, "source address", "source addresses"),
                idle.memory.before_kib,
                idle.memory.after_kib,
                met(per < TARGET_IDLE_KIB)
            ),
        });
        rows.push(Row {
            label: format!("server CPU while connections idle, {label}"),
            unit: "% of a core",
            summary: Summary::of(&[idle.cpu_percent]),
            detail: format!(
                "user + system CPU time of the server (/proc/PID/stat) over {} s while the {} \
                 connections sit in IDLE; opening them took {} s; server threads {} before, {} after",
                n(s.idle_cpu.as_secs_f64()),
                idle.memory.connections,
                n(idle.open_took.as_secs_f64()),
                idle.threads_before,
                idle.threads_after
            ),
        });
    }
    rows
}

/// `coffer --version`, or why not.
fn coffer_version(coffer: &Path) -> String {
    match std::process::Command::new(coffer).arg("--version").output() {
        Ok(o) if o.status.success() => String::from_utf8_lossy(&o.stdout).trim().to_string(),
        Ok(o) => format!("--version failed ({})", o.status),
        Err(e) => format!("--version failed ({e})"),
    }
}

fn run(s: &Settings) -> Result<(), BoxError> {
    if !s.coffer.is_file() {
        return Err(format!(
            "no coffer binary at {}; build it with `cargo build --release -p coffer` or pass --coffer",
            s.coffer.display()
        )
        .into());
    }
    let coffer = std::fs::canonicalize(&s.coffer)?;
    std::fs::create_dir_all(&s.tmp_dir)?;
    let machine = Machine::describe(Path::new(env!("CARGO_MANIFEST_DIR")));
    let load_before = machine::load_average();
    let most = s.connections.max(s.tls_connections) as u64;
    let nofile = raise_nofile(most + 256)?;

    let setup = Instant::now();
    eprintln!(
        "setup: coffer init --kdf-profile {} in {} ...",
        s.kdf_profile,
        s.tmp_dir.display()
    );
    let inst = Installation::create(&coffer, &s.tmp_dir, &s.kdf_profile)?;
    let k = &inst.config.kdf;
    let kdf = format!(
        "m={} KiB, t={}, p={} ({})",
        k.memory_kib, k.time_cost, k.parallelism, inst.config.kdf_profile
    );
    let users = (s.connections.max(s.tls_connections)).div_ceil(s.per_user);
    eprintln!("setup: {} users ({kdf}) ...", users + 1);
    inst.add_user(BIG_USER, PASSWORD)?;
    for u in 0..users {
        inst.add_user(&idle_user(u), PASSWORD)?;
    }
    let setup_took = setup.elapsed();

    eprintln!("fill: {} messages into INBOX ...", s.messages);
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()?;
    let filled = runtime.block_on(fill::fill(
        &inst.config.data_dir,
        &inst.config.pepper,
        inst.config.kdf,
        BIG_USER,
        PASSWORD,
        s.messages,
    ))?;
    drop(runtime);
    eprintln!(
        "  {} messages in {:.1} s ({:.0} msgs/s)",
        s.messages,
        filled.took.as_secs_f64(),
        s.messages as f64 / filled.took.as_secs_f64()
    );

    let mut f = Figures::default();
    login_and_mailbox(s, &inst, filled.unseen, &mut f)?;
    f.idle_plain = Some(idle_connections(s, &inst, s.connections, None, &mut f)?);
    if s.tls_connections > 0 {
        let tls = client::tls_config(&inst.config.cert)?;
        f.idle_tls = Some(idle_connections(
            s,
            &inst,
            s.tls_connections,
            Some(&tls),
            &mut f,
        )?);
    }

    let rows = rows(s, &f, &filled, &kdf);
    let scratch_fs = machine::filesystem_of(inst.path());
    drop(inst);

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
            "coffer binary".to_string(),
            format!("{} ({})", coffer.display(), coffer_version(&coffer)),
        ),
        (
            "installation".to_string(),
            format!(
                "scratch directory in {} ({}), made by coffer init and coffer user add in {} s; \
                 Argon2id {kdf}",
                s.tmp_dir.display(),
                scratch_fs,
                report::number(setup_took.as_secs_f64())
            ),
        ),
        (
            "big INBOX".to_string(),
            format!(
                "{} messages of {}–{} bytes, every {}th unseen, filled through the library",
                s.messages,
                fill::MIN_SIZE,
                fill::MAX_SIZE,
                fill::UNSEEN_EVERY
            ),
        ),
        (
            "open files (RLIMIT_NOFILE soft/hard)".to_string(),
            format!("bench {nofile}, coffer serve {}", f.server_nofile),
        ),
        (
            "parameters".to_string(),
            format!(
                "{} re-logins; {} runs per mailbox command; {} plain and {} TLS idle connections, \
                 at most {} per user and {} per source address (127.0.0.2 upwards); {} connections \
                 holding the big INBOX; CPU measured over {} s",
                s.logins,
                s.runs,
                s.connections,
                s.tls_connections,
                s.per_user,
                s.per_address,
                s.selected_connections,
                report::number(s.idle_cpu.as_secs_f64())
            ),
        ),
    ];
    let file_name = format!("imap-{}-{}.md", machine.date, machine.commit);
    let report = Report {
        title: format!(
            "Coffer IMAP server benchmarks, {} {}",
            machine.date, machine.commit
        ),
        machine,
        notes,
        rows,
        footer: "All traffic is on loopback against a `coffer serve` child process. KiB = 1024 \
                 bytes; MB = 10^6 bytes.\n`median`, `min` and `max` are over the samples \
                 described in the \"IMAP server\" section of `bench/README.md`.\n"
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

/// Runs `coffer-bench imap`; returns the process exit code.
pub fn main(args: ImapArgs) -> std::process::ExitCode {
    let settings = match Settings::from(args) {
        Ok(s) => s,
        Err(e) => {
            eprintln!("coffer-bench imap: {e}");
            return std::process::ExitCode::from(2);
        }
    };
    match run(&settings) {
        Ok(()) => std::process::ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("coffer-bench imap: {e}");
            std::process::ExitCode::FAILURE
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn source_addresses_skip_127_0_0_1() {
        assert_eq!(source_address(0).to_string(), "127.0.0.2");
        assert_eq!(source_address(253).to_string(), "127.0.0.255");
        assert_eq!(source_address(254).to_string(), "127.0.1.0");
    }

    #[test]
    fn body_literal_is_found() {
        let line = b"* 3 FETCH (UID 4 BODY[] {5}\r\nhello)\r\n";
        assert_eq!(literal_after(line, b"BODY[] {"), Some(&b"hello"[..]));
        assert_eq!(literal_after(b"* 3 FETCH (UID 4)\r\n", b"BODY[] {"), None);
    }
}
