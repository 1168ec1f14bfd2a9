//! `coffer-bench compare`: Coffer side by side with Dovecot from Debian, plain (Maildir) and
//! with mail_crypt (per-user password-protected keys), on the same machine in the same
//! run. All three servers run at once on their own loopback ports, with the same users and
//! passwords; every workload runs against each server in turn, the order of the servers
//! rotating from round to round, and one table gives the figures and the ratios
//! Coffer ÷ each Dovecot. See the "Side by side with Dovecot" section of `bench/README.md`.

mod dovecot;
mod lmtp;
mod load;

use crate::harness::{self, Summary};
use crate::imap::server::{INSECURE_PROFILE, Installation, Server};
use crate::machine::{self, Machine};
use crate::report::{self, Report};
use crate::store::BoxError;
use clap::Args;
use dovecot::{Dovecot, Flavour};
use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::{Duration, Instant};

pub(crate) const PASSWORD: &str = "correct horse battery staple bench";

#[derive(Args, Debug)]
pub struct CompareArgs {
    /// A tiny run of a few seconds checking that the harness works (the test suite runs
    /// it). Its figures are not measurements. Explicit flags still apply.
    #[arg(long)]
    smoke: bool,
    /// Servers to run, comma-separated: coffer, dovecot, dovecot-crypt
    /// [default: all three]
    #[arg(long, value_name = "LIST", value_delimiter = ',')]
    servers: Option<Vec<String>>,
    /// The coffer binary [default: target/release/coffer of this checkout]
    #[arg(long, value_name = "PATH")]
    coffer: Option<PathBuf>,
    /// Directory for the results file [default: bench/results of this checkout]
    #[arg(long, value_name = "DIR")]
    out: Option<PathBuf>,
    /// Directory in which every server's scratch directory is made [default: /tmp]
    #[arg(long, value_name = "DIR")]
    tmp_dir: Option<PathBuf>,
    /// Argon2id profile for `coffer init`: calibrated or insecure-fast-for-tests
    /// [default: calibrated; smoke: insecure-fast-for-tests]
    #[arg(long, value_name = "PROFILE")]
    kdf_profile: Option<String>,
    /// Dovecot's mail_fsync: optimized (its default: mail files are fsync'd when saved or
    /// delivered) or always [default: optimized]
    #[arg(long, value_name = "MODE")]
    dovecot_fsync: Option<String>,
    /// Rounds; each round runs every workload against every server [default: 3; smoke: 1]
    #[arg(long, value_name = "N")]
    rounds: Option<usize>,
    /// Workloads to run, comma-separated: lmtp, churn, open, login, mailbox, idle, body
    /// [default: all]
    #[arg(long, value_name = "LIST", value_delimiter = ',')]
    workloads: Option<Vec<String>>,
    /// Concurrent LMTP clients [default: 4]
    #[arg(long, value_name = "N")]
    lmtp_clients: Option<usize>,
    /// 10 KiB messages delivered per round [default: 2000; smoke: 8]
    #[arg(long, value_name = "N")]
    lmtp_small: Option<usize>,
    /// 1 MiB messages delivered per round [default: 200; smoke: 4]
    #[arg(long, value_name = "N")]
    lmtp_large: Option<usize>,
    /// IMAP clients of the mixed workloads, each its own user [default: 10; smoke: 2]
    #[arg(long, value_name = "N")]
    clients: Option<usize>,
    /// Seconds each mixed workload runs per server per round [default: 10; smoke: 0.5]
    #[arg(long, value_name = "SECONDS")]
    mix_seconds: Option<f64>,
    /// Messages in each mixed-workload user's INBOX, delivered by LMTP before the rounds
    /// [default: 100; smoke: 10]
    #[arg(long, value_name = "N")]
    mix_messages: Option<usize>,
    /// Cold logins (users never logged in) per round [default: 10; smoke: 2]
    #[arg(long, value_name = "N")]
    cold_logins: Option<usize>,
    /// Re-logins per round while another session of the user stays open [default: 100; smoke: 5]
    #[arg(long, value_name = "N")]
    relogins: Option<usize>,
    /// Messages in the big mailbox, appended by IMAP MULTIAPPEND before the rounds [default: 100000; smoke: 50]
    #[arg(long, value_name = "N")]
    big_messages: Option<usize>,
    /// Fresh sessions on the big mailbox per server per round, each timing every command of
    /// workload 4 once; the cells are the median over all sessions of all rounds
    /// [default: 5; smoke: 1]
    #[arg(long, value_name = "N")]
    mailbox_sessions: Option<usize>,
    /// Idle connections (LOGIN, SELECT, IDLE) for the memory figure, once per server
    /// [default: 2000; smoke: 10]
    #[arg(long, value_name = "K")]
    idle_connections: Option<usize>,
    /// FETCH BODY[] of the 10 MiB message per server per round [default: 20; smoke: 1]
    #[arg(long, value_name = "N")]
    body_fetches: Option<usize>,
    /// Run Coffer on PostgreSQL instead of its embedded store: the URL of an empty database
    /// (for example postgres://postgres@127.0.0.1:5432/coffer_bench after `createdb
    /// coffer_bench`), written to `[storage] url`. The results file names the backend.
    #[arg(long, value_name = "URL")]
    coffer_storage_url: Option<String>,
    /// Coffer nodes sharing the PostgreSQL database of --coffer-storage-url; IMAP clients
    /// and LMTP connections are spread over them in turn [default: 1]
    #[arg(long, value_name = "N")]
    coffer_nodes: Option<usize>,
}

pub(crate) struct Settings {
    smoke: bool,
    servers: Vec<Kind>,
    coffer: PathBuf,
    out: PathBuf,
    tmp_dir: PathBuf,
    kdf_profile: String,
    dovecot_fsync: String,
    rounds: usize,
    workloads: Vec<String>,
    pub lmtp_clients: usize,
    pub lmtp_small: usize,
    pub lmtp_large: usize,
    pub clients: usize,
    pub mix_duration: Duration,
    pub mix_messages: usize,
    pub cold_logins: usize,
    pub relogins: usize,
    pub big_messages: usize,
    pub mailbox_sessions: usize,
    pub idle_connections: usize,
    pub body_fetches: usize,
    pub timeout: Duration,
    coffer_storage_url: Option<String>,
    coffer_nodes: usize,
}

pub(crate) const WORKLOADS: &[&str] =
    &["lmtp", "churn", "open", "login", "mailbox", "idle", "body"];

#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub(crate) enum Kind {
    Coffer,
    DovecotPlain,
    DovecotCrypt,
}

impl Kind {
    fn name(self) -> &'static str {
        match self {
            Kind::Coffer => "Coffer",
            Kind::DovecotPlain => "Dovecot plain",
            Kind::DovecotCrypt => "Dovecot mail_crypt",
        }
    }
}

impl Settings {
    fn from(a: CompareArgs) -> Result<Settings, BoxError> {
        let smoke = a.smoke;
        let pick = |given: Option<usize>, full: usize, small: usize| {
            given.unwrap_or(if smoke { small } else { full })
        };
        let mut servers = Vec::new();
        for s in a
            .servers
            .unwrap_or_else(|| vec!["coffer".into(), "dovecot".into(), "dovecot-crypt".into()])
        {
            let k = match s.trim() {
                "coffer" => Kind::Coffer,
                "dovecot" | "dovecot-plain" => Kind::DovecotPlain,
                "dovecot-crypt" | "dovecot-mail-crypt" => Kind::DovecotCrypt,
                other => return Err(format!("unknown server {other:?}").into()),
            };
            if !servers.contains(&k) {
                servers.push(k);
            }
        }
        servers.sort();
        let workloads = a
            .workloads
            .unwrap_or_else(|| WORKLOADS.iter().map(|w| w.to_string()).collect());
        for w in &workloads {
            if !WORKLOADS.contains(&w.as_str()) {
                return Err(
                    format!("unknown workload {w:?}; known: {}", WORKLOADS.join(", ")).into(),
                );
            }
        }
        let mix_seconds = a.mix_seconds.unwrap_or(if smoke { 0.5 } else { 10.0 });
        if !(mix_seconds.is_finite() && mix_seconds > 0.0) {
            return Err("--mix-seconds must be a positive number".into());
        }
        let fsync = a.dovecot_fsync.unwrap_or_else(|| "optimized".into());
        if !["optimized", "always"].contains(&fsync.as_str()) {
            return Err("--dovecot-fsync must be optimized or always".into());
        }
        let s = Settings {
            smoke,
            servers,
            // Absolute: `coffer` runs with the scratch installation as its directory.
            coffer: a
                .coffer
                .map(|p| std::fs::canonicalize(&p).unwrap_or(p))
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
            dovecot_fsync: fsync,
            rounds: pick(a.rounds, 3, 1),
            workloads,
            lmtp_clients: pick(a.lmtp_clients, 4, 4),
            lmtp_small: pick(a.lmtp_small, 2000, 8),
            lmtp_large: pick(a.lmtp_large, 200, 4),
            clients: pick(a.clients, 10, 2),
            mix_duration: Duration::from_secs_f64(mix_seconds),
            mix_messages: pick(a.mix_messages, 100, 10),
            cold_logins: pick(a.cold_logins, 10, 2),
            relogins: pick(a.relogins, 100, 5),
            big_messages: pick(a.big_messages, 100_000, 50),
            mailbox_sessions: pick(a.mailbox_sessions, 5, 1),
            idle_connections: pick(a.idle_connections, 2000, 10),
            body_fetches: pick(a.body_fetches, 20, 1),
            timeout: Duration::from_secs(120),
            coffer_storage_url: a.coffer_storage_url,
            coffer_nodes: a.coffer_nodes.unwrap_or(1),
        };
        if s.coffer_nodes == 0 {
            return Err("--coffer-nodes must be at least 1".into());
        }
        if s.coffer_nodes > 1 && s.coffer_storage_url.is_none() {
            return Err("--coffer-nodes above 1 needs --coffer-storage-url (nodes share a PostgreSQL database)".into());
        }
        for (flag, n) in [
            ("--rounds", s.rounds),
            ("--lmtp-clients", s.lmtp_clients),
            ("--lmtp-small", s.lmtp_small),
            ("--lmtp-large", s.lmtp_large),
            ("--clients", s.clients),
            ("--mix-messages", s.mix_messages),
            ("--cold-logins", s.cold_logins),
            ("--relogins", s.relogins),
            ("--big-messages", s.big_messages),
            ("--mailbox-sessions", s.mailbox_sessions),
            ("--idle-connections", s.idle_connections),
            ("--body-fetches", s.body_fetches),
        ] {
            if n == 0 {
                return Err(format!("{flag} must be at least 1").into());
            }
        }
        if s.servers.is_empty() {
            return Err("--servers names no server".into());
        }
        if s.mix_messages < 6 {
            return Err("--mix-messages must be at least 6".into());
        }
        if s.clients > 40 {
            return Err(
                "--clients: Coffer allows 100 connections per address; use at most 40".into(),
            );
        }
        Ok(s)
    }

    pub fn runs(&self, w: &str) -> bool {
        self.workloads.iter().any(|x| x == w)
    }
}

/// The users every server gets, all with [`PASSWORD`].
pub(crate) struct Users;

impl Users {
    pub fn mix(i: usize) -> String {
        format!("mix{i:02}")
    }
    pub fn rcpt(i: usize) -> String {
        format!("rcpt{i}")
    }
    pub fn cold(i: usize) -> String {
        format!("cold{i:03}")
    }
    pub const RELOGIN: &'static str = "relog";
    pub const BIG: &'static str = "bigbox";
    pub const BODY: &'static str = "body10m";
    pub fn idle(i: usize) -> String {
        format!("idle{i:03}")
    }
    /// Idle connections per user and per source address (Coffer allows 50 and 100).
    pub const IDLE_PER_USER: usize = 40;
    pub const IDLE_PER_ADDRESS: usize = 80;

    fn all(s: &Settings) -> Vec<String> {
        let mut v: Vec<String> = (0..s.clients).map(Users::mix).collect();
        v.extend((0..s.lmtp_clients).map(Users::rcpt));
        if s.runs("login") {
            v.extend((0..s.cold_logins * s.rounds).map(Users::cold));
        }
        v.push(Users::RELOGIN.into());
        v.push(Users::BIG.into());
        v.push(Users::BODY.into());
        if s.runs("idle") {
            v.extend((0..s.idle_connections.div_ceil(Users::IDLE_PER_USER)).map(Users::idle));
        }
        v
    }
}

/// One running server under test.
pub(crate) struct Target {
    pub kind: Kind,
    pub imap: SocketAddr,
    /// Every node's listeners, `imap` and the first LMTP listener first (one entry except for Coffer with
    /// --coffer-nodes).
    pub imap_nodes: Vec<SocketAddr>,
    pub lmtp_nodes: Vec<SocketAddr>,
    handle: Handle,
}

enum Handle {
    Coffer {
        server: Server,
        // Dropped after the server: the scratch installation.
        _inst: Installation,
        // Further nodes on the same PostgreSQL database (server, then its installation).
        _nodes: Vec<(Server, Installation)>,
    },
    Dovecot(Dovecot),
}

impl Target {
    pub fn name(&self) -> &'static str {
        self.kind.name()
    }

    pub fn check_alive(&mut self) -> Result<(), BoxError> {
        match &mut self.handle {
            Handle::Coffer { server, .. } => server.check_alive(),
            Handle::Dovecot(d) => d.check_alive(),
        }
    }

    /// Memory attributed to IMAP sessions, (RSS, PSS) in KiB: the whole Coffer process,
    /// or the sum over Dovecot's `imap` processes.
    pub fn session_memory_kib(&self) -> (u64, u64) {
        match &self.handle {
            Handle::Coffer { server, .. } => dovecot::memory_sum_kib(&[server.pid]),
            Handle::Dovecot(d) => {
                dovecot::memory_sum_kib(&dovecot::children_named(d.master_pid(), "imap"))
            }
        }
    }

    /// Dovecot's `imap` processes (0 for Coffer).
    pub fn imap_processes(&self) -> usize {
        match &self.handle {
            Handle::Coffer { .. } => 0,
            Handle::Dovecot(d) => dovecot::children_named(d.master_pid(), "imap").len(),
        }
    }

    fn log_tail(&self) -> String {
        match &self.handle {
            Handle::Coffer { server, .. } => server.log_tail(),
            Handle::Dovecot(d) => d.log_tail(),
        }
    }
}

fn start_coffer(s: &Settings, users: &[String]) -> Result<(Target, String), BoxError> {
    eprintln!(
        "coffer: init ({}) and {} users ...",
        s.kdf_profile,
        users.len()
    );
    let inst = Installation::create(&s.coffer, &s.tmp_dir, &s.kdf_profile)?;
    if let Some(url) = &s.coffer_storage_url {
        inst.use_storage_url(url)?;
    }
    for u in users {
        inst.add_user(u, PASSWORD)?;
    }
    let server = inst.start()?;
    let lmtp = server
        .lmtp
        .ok_or("coffer serve reported no TCP LMTP listener")?;
    let mut imap_nodes = vec![server.imap];
    let mut lmtp_nodes = vec![lmtp];
    let mut nodes = Vec::new();
    if let Some(url) = &s.coffer_storage_url {
        for _ in 1..s.coffer_nodes {
            let node = inst.another_node(&s.tmp_dir, url)?;
            let node_server = node.start()?;
            imap_nodes.push(node_server.imap);
            lmtp_nodes.push(
                node_server
                    .lmtp
                    .ok_or("coffer serve reported no TCP LMTP listener")?,
            );
            nodes.push((node_server, node));
        }
    }
    let k = &inst.config.kdf;
    let backend = match &s.coffer_storage_url {
        // The URL without a password, if it has one.
        Some(url) => format!("PostgreSQL {}, {} node(s)", redact_url(url), s.coffer_nodes),
        None => "embedded store".to_string(),
    };
    let kdf = format!(
        "{} (m={} KiB, t={}, p={}); {backend}",
        inst.config.kdf_profile, k.memory_kib, k.time_cost, k.parallelism
    );
    Ok((
        Target {
            kind: Kind::Coffer,
            imap: server.imap,
            imap_nodes,
            lmtp_nodes,
            handle: Handle::Coffer {
                server,
                _inst: inst,
                _nodes: nodes,
            },
        },
        kdf,
    ))
}

/// `postgres://user:secret@host/db` → `postgres://user@host/db`.
fn redact_url(url: &str) -> String {
    match (url.find("://"), url.rfind('@')) {
        (Some(scheme), Some(at)) if at > scheme => {
            let userinfo = &url[scheme + 3..at];
            let user = userinfo.split(':').next().unwrap_or("");
            format!("{}{user}{}", &url[..scheme + 3], &url[at..])
        }
        _ => url.to_string(),
    }
}

fn start_dovecot(
    s: &Settings,
    flavour: Flavour,
    users: &[String],
) -> Result<(Target, String), BoxError> {
    let kind = match flavour {
        Flavour::Plain => Kind::DovecotPlain,
        Flavour::MailCrypt => Kind::DovecotCrypt,
    };
    eprintln!("{}: config and {} users ...", kind.name(), users.len());
    let d = Dovecot::start(flavour, &s.tmp_dir, users, PASSWORD, &s.dovecot_fsync)?;
    let version = d.version.clone();
    Ok((
        Target {
            kind,
            imap: d.imap,
            imap_nodes: vec![d.imap],
            lmtp_nodes: vec![d.lmtp],
            handle: Handle::Dovecot(d),
        },
        version,
    ))
}

/// One figure of the table: a value per server per round (or pooled samples).
#[derive(Default)]
struct Figure {
    label: String,
    unit: &'static str,
    /// Whether more is better (rates) or less (latency, memory).
    higher_is_better: bool,
    detail: String,
    values: BTreeMap<Kind, Vec<f64>>,
    /// When set, the cell is this percentile of all values instead of the median.
    percentile: Option<f64>,
    failures: BTreeMap<Kind, String>,
}

struct Table {
    figures: Vec<Figure>,
}

impl Table {
    fn figure(
        &mut self,
        label: &str,
        unit: &'static str,
        higher: bool,
        pct: Option<f64>,
    ) -> &mut Figure {
        if let Some(i) = self.figures.iter().position(|f| f.label == label) {
            return &mut self.figures[i];
        }
        self.figures.push(Figure {
            label: label.to_string(),
            unit,
            higher_is_better: higher,
            percentile: pct,
            ..Default::default()
        });
        self.figures.last_mut().expect("just pushed")
    }

    fn add(&mut self, label: &str, unit: &'static str, higher: bool, kind: Kind, v: &[f64]) {
        self.figure(label, unit, higher, None)
            .values
            .entry(kind)
            .or_default()
            .extend_from_slice(v);
    }

    fn fail(&mut self, label: &str, unit: &'static str, higher: bool, kind: Kind, e: &str) {
        self.figure(label, unit, higher, None)
            .failures
            .entry(kind)
            .or_insert_with(|| e.to_string());
    }

    fn markdown(&self, servers: &[Kind]) -> String {
        let n = report::number;
        let mut head = String::from("| figure | unit |");
        let mut rule = String::from("|---|---|");
        for k in servers {
            head.push_str(&format!(" {} |", k.name()));
            rule.push_str("---:|");
        }
        let dovecots: Vec<Kind> = servers
            .iter()
            .copied()
            .filter(|k| *k != Kind::Coffer)
            .collect();
        let with_coffer = servers.contains(&Kind::Coffer);
        if with_coffer {
            for d in &dovecots {
                head.push_str(&format!(" Coffer ÷ {} |", d.name()));
                rule.push_str("---:|");
            }
        }
        head.push_str(" detail |\n");
        rule.push_str("---|\n");
        let mut out = head + &rule;
        for f in &self.figures {
            let cell = |k: Kind| -> (String, Option<f64>) {
                if let Some(e) = f.failures.get(&k) {
                    let _ = e;
                    return ("FAILED".into(), None);
                }
                match f.values.get(&k) {
                    Some(v) if !v.is_empty() => {
                        if let Some(p) = f.percentile {
                            let x = harness::percentile(&harness::sorted(v), p);
                            (n(x), Some(x))
                        } else {
                            let s = Summary::of(v);
                            if s.samples == 1 {
                                (n(s.median), Some(s.median))
                            } else {
                                (
                                    format!("{} ({}–{})", n(s.median), n(s.min), n(s.max)),
                                    Some(s.median),
                                )
                            }
                        }
                    }
                    _ => ("–".into(), None),
                }
            };
            let unit = format!(
                "{} ({})",
                f.unit,
                if f.higher_is_better {
                    "higher is better"
                } else {
                    "lower is better"
                }
            );
            out.push_str(&format!("| {} | {unit} |", f.label));
            for k in servers {
                out.push_str(&format!(" {} |", cell(*k).0));
            }
            if with_coffer {
                let c = cell(Kind::Coffer).1;
                for d in &dovecots {
                    let r = match (c, cell(*d).1) {
                        (Some(c), Some(d)) if d != 0.0 => format!("{}×", n(c / d)),
                        _ => "–".into(),
                    };
                    out.push_str(&format!(" {r} |"));
                }
            }
            out.push_str(&format!(" {} |\n", f.detail));
        }
        out
    }
}

/// Runs `f` for one workload on one server; a failure is recorded, not fatal, so that
/// the other servers and workloads still run.
fn attempt<T>(
    t: &mut Target,
    what: &str,
    failures: &mut Vec<String>,
    f: impl FnOnce(&mut Target) -> Result<T, BoxError>,
) -> Option<T> {
    // What the previous workload left in the page cache is written back first, untimed:
    // the 1 MiB deliveries leave hundreds of MB of dirty pages, whose write-back would
    // otherwise run during (and be charged to) whichever server comes next.
    rustix::fs::sync();
    let r = f(t).and_then(|v| t.check_alive().map(|()| v));
    match r {
        Ok(v) => Some(v),
        Err(e) => {
            let msg = format!("{} / {what}: {e}", t.name());
            eprintln!("FAILED: {msg}\n  server log tail:\n{}", t.log_tail());
            failures.push(msg);
            None
        }
    }
}

fn run(s: &Settings) -> Result<(), BoxError> {
    let machine = Machine::describe(&crate::bench_dir());
    let load_before = machine::load_average();
    let started = Instant::now();
    std::fs::create_dir_all(&s.tmp_dir)?;
    if s.servers.iter().any(|k| *k != Kind::Coffer) {
        dovecot::available()?;
    }
    if s.runs("idle") {
        raise_nofile(s.idle_connections as u64 * 2 + 512)?;
    }
    let users = Users::all(s);
    let mut targets = Vec::new();
    let mut versions = Vec::new();
    for k in &s.servers {
        let (t, v) = match k {
            Kind::Coffer => start_coffer(s, &users)?,
            Kind::DovecotPlain => start_dovecot(s, Flavour::Plain, &users)?,
            Kind::DovecotCrypt => start_dovecot(s, Flavour::MailCrypt, &users)?,
        };
        versions.push((k.name(), v));
        targets.push(t);
    }
    let corpus = load::corpus();
    let mut failures = Vec::new();
    let mut table = Table {
        figures: Vec::new(),
    };
    let mut notes = Vec::new();

    // Set-up, untimed: seed the mailboxes through each server's own LMTP (the big mailbox
    // by IMAP MULTIAPPEND, see `load::append_all`).
    for t in targets.iter_mut() {
        eprintln!("{}: seeding mailboxes ...", t.name());
        let fill = attempt(t, "seeding", &mut failures, |t| load::seed(s, t, &corpus));
        if let Some(took) = fill {
            notes.push((
                format!("set-up (LMTP; the big mailbox by IMAP), {}", t.name()),
                format!("{:.1} s", took.as_secs_f64()),
            ));
        }
        // The first login of every mix user and the re-login user (cold for Coffer).
        attempt(t, "warm-up logins", &mut failures, |t| load::warm_up(s, t));
    }

    let n = targets.len();
    for round in 0..s.rounds {
        let order: Vec<usize> = (0..n).map(|i| (i + round) % n).collect();
        eprintln!(
            "== round {}/{}: order {}",
            round + 1,
            s.rounds,
            order
                .iter()
                .map(|&i| targets[i].name())
                .collect::<Vec<_>>()
                .join(", ")
        );
        if s.runs("lmtp") {
            for (size, count, label) in [
                (10 * 1024, s.lmtp_small, "10 KiB"),
                (1024 * 1024, s.lmtp_large, "1 MiB"),
            ] {
                let rate_label = format!("(3) LMTP delivery, {label}, rate");
                let mb_label = format!("(3) LMTP delivery, {label}, throughput");
                for &i in &order {
                    let t = &mut targets[i];
                    let kind = t.kind;
                    match attempt(t, &rate_label, &mut failures, |t| {
                        load::lmtp_round(s, t, size, count)
                    }) {
                        Some(secs) => {
                            let rate = count as f64 / secs;
                            eprintln!("  {} LMTP {label}: {rate:.0} msgs/s", t.name());
                            table.add(&rate_label, "msgs/s", true, kind, &[rate]);
                            table.add(&mb_label, "MB/s", true, kind, &[rate * size as f64 / 1e6]);
                        }
                        None => {
                            table.fail(&rate_label, "msgs/s", true, kind, "failed");
                            table.fail(&mb_label, "MB/s", true, kind, "failed");
                        }
                    }
                }
                for l in [&rate_label, &mb_label] {
                    table.figure(l, "", true, None).detail = format!(
                        "{count} messages of {size} bytes per round from {} concurrent LMTP \
                         connections (one recipient each, recipients rcpt0..), until the last 250",
                        s.lmtp_clients
                    );
                }
            }
        }
        for (w, churn, label) in [
            ("churn", true, "(1) mixed IMAP with login churn"),
            ("open", false, "(2) mixed IMAP, sessions kept open"),
        ] {
            if !s.runs(w) {
                continue;
            }
            for &i in &order {
                let t = &mut targets[i];
                let kind = t.kind;
                match attempt(t, label, &mut failures, |t| {
                    load::mixed(s, t, &corpus, churn)
                }) {
                    Some(r) => {
                        eprintln!(
                            "  {} {w}: {:.0} commands/s ({} commands, {} sessions)",
                            t.name(),
                            r.rate(),
                            r.commands,
                            r.sessions
                        );
                        table.add(label, "commands/s", true, kind, &[r.rate()]);
                    }
                    None => table.fail(label, "commands/s", true, kind, "failed"),
                }
            }
            table.figure(label, "", true, None).detail = if churn {
                format!(
                    "{} clients, each its own user with {} messages, {} s per round: connect, \
                     LOGIN, SELECT, FETCH 1:* (FLAGS), FETCH last 5 (ENVELOPE), FETCH one (BODY[]), \
                     STORE +FLAGS (\\Seen), APPEND (fixed corpus), STORE 1 +FLAGS.SILENT (\\Deleted), \
                     EXPUNGE, LOGOUT = 10 commands",
                    s.clients,
                    s.mix_messages,
                    s.mix_duration.as_secs_f64()
                )
            } else {
                format!(
                    "as (1) but each client logs in once per round and loops SELECT … EXPUNGE \
                     (8 commands) on the open session; {} clients, {} s per round",
                    s.clients,
                    s.mix_duration.as_secs_f64()
                )
            };
        }
        if s.runs("login") {
            for &i in &order {
                let t = &mut targets[i];
                let kind = t.kind;
                if let Some((cold, re)) = attempt(t, "(5) logins", &mut failures, |t| {
                    load::logins(s, t, round)
                }) {
                    eprintln!(
                        "  {} logins: cold p50 {:.2} ms, re-login p50 {:.3} ms",
                        t.name(),
                        harness::percentile(&harness::sorted(&cold), 50.0),
                        harness::percentile(&harness::sorted(&re), 50.0)
                    );
                    for (label, pct, v) in [
                        ("(5) cold login, LOGIN round trip, p50", 50.0, &cold),
                        ("(5) cold login, LOGIN round trip, p99", 99.0, &cold),
                        ("(5) re-login, LOGIN round trip, p50", 50.0, &re),
                        ("(5) re-login, LOGIN round trip, p99", 99.0, &re),
                    ] {
                        let f = table.figure(label, "ms", false, Some(pct));
                        f.values.entry(kind).or_default().extend_from_slice(v);
                    }
                } else {
                    for l in [
                        "(5) cold login, LOGIN round trip, p50",
                        "(5) cold login, LOGIN round trip, p99",
                        "(5) re-login, LOGIN round trip, p50",
                        "(5) re-login, LOGIN round trip, p99",
                    ] {
                        table.fail(l, "ms", false, kind, "failed");
                    }
                }
            }
            for l in [
                "(5) cold login, LOGIN round trip, p50",
                "(5) cold login, LOGIN round trip, p99",
            ] {
                table.figure(l, "", false, None).detail = format!(
                    "first LOGIN of a user never logged in since the server started ({} per round, \
                     pooled over rounds, nearest rank); Coffer runs Argon2id here, Dovecot one \
                     SHA512-CRYPT check (mail_crypt unlocks the key only when mail is opened)",
                    s.cold_logins
                );
            }
            for l in [
                "(5) re-login, LOGIN round trip, p50",
                "(5) re-login, LOGIN round trip, p99",
            ] {
                table.figure(l, "", false, None).detail = format!(
                    "new connection, LOGIN timed, LOGOUT, while another session of the user stays \
                     open; {} per round, pooled; target for Coffer p50 < 2 ms",
                    s.relogins
                );
            }
        }
        if s.runs("mailbox") {
            for &i in &order {
                let t = &mut targets[i];
                let kind = t.kind;
                for _ in 0..s.mailbox_sessions {
                    match attempt(t, "(4) big mailbox", &mut failures, |t| {
                        load::big_mailbox(s, t)
                    }) {
                        Some(rows) => {
                            for (label, v) in rows {
                                table.add(&label, "ms", false, kind, &[v]);
                            }
                        }
                        None => {
                            for l in load::big_mailbox_labels(s) {
                                table.fail(&l, "ms", false, kind, "failed");
                            }
                            break;
                        }
                    }
                }
            }
            for l in load::big_mailbox_labels(s) {
                table.figure(&l, "", false, None).detail = format!(
                    "{} messages of 1–2 KiB appended by IMAP MULTIAPPEND ({} connections) before the rounds, the first \
                     90 % then marked \\Seen; {} fresh sessions per round, each: LOGIN, then every \
                     command timed once; median over all sessions of all rounds; answers checked \
                     (counts, hits, bodies)",
                    s.big_messages, s.lmtp_clients, s.mailbox_sessions
                );
            }
        }
        if s.runs("body") {
            let label = "(7) FETCH BODY[] of a 10 MiB message";
            for &i in &order {
                let t = &mut targets[i];
                let kind = t.kind;
                match attempt(t, label, &mut failures, |t| load::body_fetch(s, t)) {
                    Some(v) => table.add(label, "MB/s", true, kind, &v),
                    None => table.fail(label, "MB/s", true, kind, "failed"),
                }
            }
            table.figure(label, "", true, None).detail = format!(
                "a 10,485,760-byte body delivered by LMTP; {} × UID FETCH 1 (BODY.PEEK[]) per \
                 round on an open session, bytes checked; MB/s of message bytes",
                s.body_fetches
            );
        }
    }
    if s.runs("idle") {
        let label = "(6) memory per idle connection, RSS";
        let pss_label = "(6) memory per idle connection, PSS";
        for t in targets.iter_mut() {
            let kind = t.kind;
            match attempt(t, label, &mut failures, |t| load::idle(s, t)) {
                Some((rss, pss, detail)) => {
                    eprintln!(
                        "  {} idle: RSS {rss:.1} KiB, PSS {pss:.1} KiB per connection ({detail})",
                        t.name()
                    );
                    table.add(label, "KiB", false, kind, &[rss]);
                    table.add(pss_label, "KiB", false, kind, &[pss]);
                    notes.push((format!("idle memory, {}", t.name()), detail));
                }
                None => {
                    table.fail(label, "KiB", false, kind, "failed");
                    table.fail(pss_label, "KiB", false, kind, "failed");
                }
            }
        }
        table.figure(pss_label, "", false, None).detail =
            "the same connections; proportional set size (smaps_rollup Pss), which divides each \
             shared page among the processes that map it"
                .into();
        table.figure(label, "", false, None).detail = format!(
            "{} connections LOGIN, SELECT INBOX (empty), IDLE; once per server after the \
             rounds; Coffer: server VmRSS after − before; Dovecot: sum of VmRSS of its imap \
             processes after − before (shared library pages count once per process); ÷ connections",
            s.idle_connections
        );
    }
    if s.runs("body") {
        // The target's baseline is the implementation Coffer's body path decrypts with
        // (ring, crates/coffer-vault/src/age_open.rs), which is also the faster of the two.
        let (mbps, detail) = load::chacha_ring(s.smoke);
        notes.push((
            "single-core ChaCha20-Poly1305, ring (for (7))".into(),
            format!("{} MB/s; {detail}", report::number(mbps)),
        ));
        let (mbps, detail) = load::chacha_rustcrypto(s.smoke);
        notes.push((
            "single-core ChaCha20-Poly1305, RustCrypto".into(),
            format!("{} MB/s; {detail}", report::number(mbps)),
        ));
    }
    drop(targets);

    let load_after = machine::load_average();
    let mode = if s.smoke {
        "smoke (tiny sizes; not a measurement)"
    } else {
        "full"
    };
    let mut all_notes = vec![
        ("mode".to_string(), mode.to_string()),
        (
            "load average (1/5/15 min)".into(),
            format!("{load_before} before, {load_after} after"),
        ),
        (
            "scratch directories".into(),
            machine::filesystem_of(&s.tmp_dir),
        ),
    ];
    for (k, v) in &versions {
        all_notes.push((k.to_string(), v.clone()));
    }
    all_notes.push((
        "parameters".into(),
        format!(
            "{} rounds (server order rotates each round); workloads {}; LMTP {} clients, {} × 10 KiB \
             and {} × 1 MiB per round; {} IMAP clients × {} s, {} messages each; {} cold logins and \
             {} re-logins per round; big mailbox {} messages, {} sessions per round; {} idle connections; {} × 10 MiB \
             fetches per round; Dovecot mail_fsync = {}",
            s.rounds,
            s.workloads.join(","),
            s.lmtp_clients,
            s.lmtp_small,
            s.lmtp_large,
            s.clients,
            s.mix_duration.as_secs_f64(),
            s.mix_messages,
            s.cold_logins,
            s.relogins,
            s.big_messages,
            s.mailbox_sessions,
            s.idle_connections,
            s.body_fetches,
            s.dovecot_fsync
        ),
    ));
    all_notes.extend(notes);
    all_notes.push((
        "run time".into(),
        format!("{:.0} s", started.elapsed().as_secs_f64()),
    ));
    let file_name = format!("compare-{}-{}.md", machine.date, machine.commit);
    let header = Report {
        title: String::new(),
        machine,
        notes: all_notes,
        rows: Vec::new(),
        footer: String::new(),
    };
    let mut text = format!(
        "# Coffer and Dovecot side by side, {} {}\n\n{}\n{}\n",
        header.machine.date,
        header.machine.commit,
        header.header(),
        table.markdown(&s.servers)
    );
    text.push_str(
        "Cells: median over the rounds (min–max), or for p50/p99 rows the percentile of all \
         samples of all rounds. Ratios are Coffer's cell ÷ the Dovecot cell: above 1 is better \
         for rates, below 1 is better for latency and memory. MB = 10^6 bytes.\n",
    );
    if !failures.is_empty() {
        text.push_str("\n## Failures\n\n");
        for f in &failures {
            text.push_str(&format!("- {}\n", f.replace('\n', " ")));
        }
    }
    println!("\n{text}");
    std::fs::create_dir_all(&s.out)?;
    let path = s.out.join(file_name);
    std::fs::write(&path, &text)?;
    eprintln!("wrote {}", path.display());
    if !failures.is_empty() {
        return Err(format!(
            "{} workload(s) failed (see the results file)",
            failures.len()
        )
        .into());
    }
    Ok(())
}

/// Raises the soft open-files limit to `needed` if the hard limit allows.
fn raise_nofile(needed: u64) -> Result<(), BoxError> {
    use rustix::process::{Resource, getrlimit, setrlimit};
    let mut limit = getrlimit(Resource::Nofile);
    if limit.current.is_some_and(|soft| soft < needed) {
        if limit.maximum.is_some_and(|h| h < needed) {
            return Err(format!(
                "{needed} open files are needed; raise the hard limit or use fewer --idle-connections"
            )
            .into());
        }
        limit.current = Some(needed);
        setrlimit(Resource::Nofile, limit)?;
    }
    Ok(())
}

pub fn main(args: CompareArgs) -> std::process::ExitCode {
    let settings = match Settings::from(args) {
        Ok(s) => s,
        Err(e) => {
            eprintln!("coffer-bench compare: {e}");
            return std::process::ExitCode::from(2);
        }
    };
    match run(&settings) {
        Ok(()) => std::process::ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("coffer-bench compare: {e}");
            std::process::ExitCode::FAILURE
        }
    }
}
