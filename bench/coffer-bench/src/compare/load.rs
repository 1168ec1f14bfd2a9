//! The load generator of `coffer-bench compare`: every workload, written once against
//! plain IMAP and LMTP so that it runs unchanged against Coffer and both Dovecots.

use super::lmtp::{Lmtp, data_block};
use super::{PASSWORD, Settings, Target, Users};
use crate::harness;
use crate::imap::client::{Client, Connect, quoted};
use crate::store::BoxError;
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::sync::{Arc, Barrier};
use std::time::{Duration, Instant};

/// Upper bound on the iterations of one mixed-workload client in one round, so that a
/// server answering instantly with errors cannot spin the loop forever.
const MAX_ITERATIONS: usize = 10_000_000;

/// A plain-text message of `size` bytes with its own subject, from a seeded generator.
pub fn message(seed: u64, size: usize, subject: &str) -> Vec<u8> {
    let mut rng = StdRng::seed_from_u64(seed);
    let mut out = format!(
        "From: Bench Sender <sender@bench.invalid>\r\nTo: bench@localhost\r\n\
         Subject: {subject}\r\nDate: Thu, 01 Jan 2026 00:00:00 +0000\r\n\
         Message-ID: <{seed:016x}.{size}@bench.invalid>\r\nMIME-Version: 1.0\r\n\
         Content-Type: text/plain; charset=utf-8\r\n\r\n"
    )
    .into_bytes();
    let mut line = String::with_capacity(80);
    while out.len() + 2 < size {
        line.clear();
        while line.len() < 70 {
            if !line.is_empty() {
                line.push(' ');
            }
            line.push_str(crate::WORDS[rng.gen_range(0..crate::WORDS.len())]);
        }
        line.push_str("\r\n");
        out.extend_from_slice(line.as_bytes());
    }
    out.truncate(size.saturating_sub(2));
    while out.ends_with(b"\r") {
        out.pop();
    }
    out.extend_from_slice(b"\r\n");
    out
}

/// The fixed corpus of the mixed workloads: 16 messages of 1.5 to 50 KB.
pub fn corpus() -> Vec<Vec<u8>> {
    [
        1500, 2500, 4000, 6000, 9000, 14000, 20000, 30000, 3000, 5000, 2000, 8000, 12000, 50000,
        1800, 7000,
    ]
    .iter()
    .enumerate()
    .map(|(i, &size)| message(i as u64, size, &format!("corpus message {i}")))
    .collect()
}

fn connect(s: &Settings, addr: SocketAddr, source: Option<IpAddr>) -> Result<Client, BoxError> {
    Client::connect(&Connect {
        addr,
        source,
        tls: None,
        timeout: s.timeout,
    })
}

fn login(c: &mut Client, user: &str) -> Result<Duration, BoxError> {
    c.run(
        &format!("LOGIN {} {}", quoted(user), quoted(PASSWORD)),
        |_| {},
    )
}

/// SELECT INBOX; returns the EXISTS count.
fn select(c: &mut Client) -> Result<usize, BoxError> {
    let mut exists = None;
    c.run("SELECT INBOX", |l| {
        if let Some(n) = l
            .strip_prefix(b"* ")
            .and_then(|r| std::str::from_utf8(r).ok())
            .and_then(|r| r.trim_end().strip_suffix(" EXISTS"))
        {
            exists = n.parse::<usize>().ok();
        }
    })?;
    exists.ok_or_else(|| "SELECT INBOX gave no EXISTS".into())
}

/// Delivers `messages` (round robin over `rcpts`) from `clients` concurrent LMTP
/// connections, each opened before the clock starts. Returns the seconds from the start
/// until the last delivery was acknowledged.
fn deliver_all(
    s: &Settings,
    addrs: &[SocketAddr],
    rcpts: &[String],
    messages: Arc<Vec<Vec<u8>>>,
    count: usize,
    clients: usize,
) -> Result<f64, BoxError> {
    let clients = clients.min(count).max(1);
    let barrier = Arc::new(Barrier::new(clients + 1));
    let mut threads = Vec::new();
    for c in 0..clients {
        let barrier = barrier.clone();
        let messages = messages.clone();
        let rcpts = rcpts.to_vec();
        let timeout = s.timeout;
        // Connections go to the nodes in turn.
        let addr = addrs[c % addrs.len()];
        threads.push(std::thread::spawn(move || -> Result<(), String> {
            let conn = Lmtp::connect(addr, timeout);
            barrier.wait();
            let mut conn = conn.map_err(|e| e.to_string())?;
            let mut j = c;
            while j < count {
                let rcpt = &rcpts[j % rcpts.len()];
                conn.deliver(rcpt, &messages[j % messages.len()])
                    .map_err(|e| format!("delivery {j} to {rcpt}: {e}"))?;
                j += clients;
            }
            conn.quit();
            Ok(())
        }));
    }
    barrier.wait();
    let start = Instant::now();
    let mut first_error = None;
    for t in threads {
        let r = t.join().map_err(|_| "an LMTP client thread panicked")?;
        if let Err(e) = r {
            first_error.get_or_insert(e);
        }
    }
    let secs = start.elapsed().as_secs_f64();
    match first_error {
        Some(e) => Err(e.into()),
        None => Ok(secs),
    }
}

fn local_part_at(user: &str) -> String {
    format!("{user}@localhost")
}

/// Untimed set-up through the server's own LMTP: the mixed-workload INBOXes, the big
/// mailbox (the first 90 % then marked \Seen over IMAP) and the 10 MiB message.
pub fn seed(s: &Settings, t: &mut Target, corpus: &[Vec<u8>]) -> Result<Duration, BoxError> {
    let start = Instant::now();
    let blocks: Arc<Vec<Vec<u8>>> = Arc::new(corpus.iter().map(|m| data_block(m)).collect());
    if s.runs("churn") || s.runs("open") {
        let rcpts: Vec<String> = (0..s.clients)
            .map(|i| local_part_at(&Users::mix(i)))
            .collect();
        deliver_all(
            s,
            &t.lmtp_nodes,
            &rcpts,
            blocks.clone(),
            s.clients * s.mix_messages,
            s.lmtp_clients,
        )?;
    }
    if s.runs("mailbox") {
        let m = s.big_messages;
        eprintln!("  big mailbox: {m} messages ...");
        let big: Vec<Vec<u8>> = (0..m)
            .map(|i| {
                let size = 1024 + (i * 7919) % 1024;
                message(1_000_000 + i as u64, size, &format!("big mailbox #{i}"))
            })
            .collect();
        append_all(s, t.imap, Users::BIG, Arc::new(big), s.lmtp_clients)?;
        let mut c = connect(s, t.imap, None)?;
        login(&mut c, Users::BIG)?;
        let exists = select(&mut c)?;
        if exists != m {
            return Err(format!("the big mailbox has {exists} messages, expected {m}").into());
        }
        c.run(
            &format!("STORE 1:{} +FLAGS.SILENT (\\Seen)", seen_count(m)),
            |_| {},
        )?;
        c.run("LOGOUT", |_| {})?;
    }
    if s.runs("body") {
        let body = data_block(&message(7, 10 * 1024 * 1024, "ten mebibytes"));
        deliver_all(
            s,
            &t.lmtp_nodes,
            &[local_part_at(Users::BODY)],
            Arc::new(vec![body]),
            1,
            1,
        )?;
    }
    Ok(start.elapsed())
}

/// Messages per MULTIAPPEND command of the big mailbox's set-up (about 375 KiB).
const APPEND_BATCH: usize = 250;

/// Appends `messages` to `user`'s INBOX from `clients` IMAP connections at once, each
/// sending MULTIAPPEND commands of [`APPEND_BATCH`] messages. The big mailbox is filled
/// this way rather than by LMTP: Dovecot's LMTP re-reads the mailbox's `dovecot-uidlist`
/// for every delivery, which slows it down as the mailbox grows (1 MB at 54,000 messages;
/// 100,000 deliveries did not finish in reasonable time), while an IMAP session keeps the
/// mailbox open.
fn append_all(
    s: &Settings,
    addr: SocketAddr,
    user: &str,
    messages: Arc<Vec<Vec<u8>>>,
    clients: usize,
) -> Result<(), BoxError> {
    let batches = messages.len().div_ceil(APPEND_BATCH);
    let clients = clients.min(batches).max(1);
    let mut threads = Vec::new();
    for c in 0..clients {
        let messages = messages.clone();
        let user = user.to_string();
        let timeout = s.timeout;
        threads.push(std::thread::spawn(move || -> Result<(), String> {
            let run = || -> Result<(), BoxError> {
                let mut conn = Client::connect(&Connect {
                    addr,
                    source: None,
                    tls: None,
                    timeout,
                })?;
                login(&mut conn, &user)?;
                for b in (c..batches).step_by(clients) {
                    let end = ((b + 1) * APPEND_BATCH).min(messages.len());
                    let batch: Vec<&[u8]> = messages[b * APPEND_BATCH..end]
                        .iter()
                        .map(|m| m.as_slice())
                        .collect();
                    conn.multi_append("INBOX", &batch)
                        .map_err(|e| format!("batch {b}: {e}"))?;
                }
                conn.run("LOGOUT", |_| {})?;
                Ok(())
            };
            run().map_err(|e| e.to_string())
        }));
    }
    for t in threads {
        t.join().map_err(|_| "an APPEND client thread panicked")??;
    }
    Ok(())
}

fn seen_count(m: usize) -> usize {
    (m * 9 / 10).max(1)
}

/// One LOGIN and LOGOUT of every user the rounds log in repeatedly, so that the rounds
/// measure a server that has seen them (for Coffer, the first is a cold login).
pub fn warm_up(s: &Settings, t: &mut Target) -> Result<(), BoxError> {
    let mut users: Vec<String> = (0..s.clients).map(Users::mix).collect();
    users.push(Users::RELOGIN.into());
    users.push(Users::BIG.into());
    users.push(Users::BODY.into());
    for u in users {
        let mut c = connect(s, t.imap, None)?;
        login(&mut c, &u)?;
        c.run("LOGOUT", |_| {})?;
    }
    Ok(())
}

/// Workload 3: `count` messages of `size` bytes from the configured LMTP clients.
pub fn lmtp_round(
    s: &Settings,
    t: &mut Target,
    size: usize,
    count: usize,
) -> Result<f64, BoxError> {
    let block = data_block(&message(size as u64, size, &format!("lmtp {size}")));
    let rcpts: Vec<String> = (0..s.lmtp_clients)
        .map(|i| local_part_at(&Users::rcpt(i)))
        .collect();
    deliver_all(
        s,
        &t.lmtp_nodes,
        &rcpts,
        Arc::new(vec![block]),
        count,
        s.lmtp_clients,
    )
}

pub struct Mixed {
    pub commands: usize,
    pub sessions: usize,
    pub secs: f64,
}

impl Mixed {
    pub fn rate(&self) -> f64 {
        self.commands as f64 / self.secs
    }
}

/// One pass SELECT … EXPUNGE on a logged-in session; returns the commands it ran.
fn mixed_pass(
    c: &mut Client,
    rng: &mut StdRng,
    corpus: &[Vec<u8>],
    k: usize,
) -> Result<usize, BoxError> {
    let n = select(c)?;
    if n == 0 {
        return Err("the INBOX of a mixed-workload user is empty".into());
    }
    c.run("FETCH 1:* (FLAGS)", |_| {})?;
    c.run(
        &format!("FETCH {}:{n} (ENVELOPE)", n.saturating_sub(4).max(1)),
        |_| {},
    )?;
    let mut got = false;
    c.run(&format!("FETCH {} (BODY[])", rng.gen_range(1..=n)), |l| {
        got |= l.windows(8).any(|w| w == b"BODY[] {");
    })?;
    if !got {
        return Err("FETCH BODY[] returned no body".into());
    }
    c.run(
        &format!("STORE {} +FLAGS (\\Seen)", rng.gen_range(1..=n)),
        |_| {},
    )?;
    c.append("INBOX", "", &corpus[k % corpus.len()])?;
    c.run("STORE 1 +FLAGS.SILENT (\\Deleted)", |_| {})?;
    c.run("EXPUNGE", |_| {})?;
    Ok(8)
}

/// Workloads 1 (`churn`) and 2: `clients` threads, each on its own user, for the set time.
pub fn mixed(
    s: &Settings,
    t: &mut Target,
    corpus: &[Vec<u8>],
    churn: bool,
) -> Result<Mixed, BoxError> {
    let corpus = Arc::new(corpus.to_vec());
    let barrier = Arc::new(Barrier::new(s.clients + 1));
    let mut threads = Vec::new();
    for i in 0..s.clients {
        // Clients go to the nodes in turn.
        let addr = t.imap_nodes[i % t.imap_nodes.len()];
        let barrier = barrier.clone();
        let corpus = corpus.clone();
        let user = Users::mix(i);
        let timeout = s.timeout;
        let duration = s.mix_duration;
        threads.push(std::thread::spawn(
            move || -> Result<(usize, usize), String> {
                let dial = || {
                    Client::connect(&Connect {
                        addr,
                        source: None,
                        tls: None,
                        timeout,
                    })
                };
                let mut rng = StdRng::seed_from_u64(i as u64);
                // Sessions kept open: connect and log in before the clock starts.
                let mut open = if churn {
                    None
                } else {
                    let r = dial().and_then(|mut c| login(&mut c, &user).map(|_| c));
                    Some(r)
                };
                barrier.wait();
                let deadline = Instant::now() + duration;
                let (mut commands, mut sessions) = (0usize, 0usize);
                let res = (|| -> Result<(), BoxError> {
                    let mut held = match open.take() {
                        Some(r) => Some(r?),
                        None => None,
                    };
                    for k in i..i + MAX_ITERATIONS {
                        if Instant::now() >= deadline {
                            break;
                        }
                        match held.as_mut() {
                            Some(c) => commands += mixed_pass(c, &mut rng, &corpus, k)?,
                            None => {
                                let mut c = dial()?;
                                login(&mut c, &user)?;
                                commands += 1;
                                commands += mixed_pass(&mut c, &mut rng, &corpus, k)?;
                                c.run("LOGOUT", |_| {})?;
                                commands += 1;
                                sessions += 1;
                            }
                        }
                    }
                    if let Some(mut c) = held {
                        c.run("LOGOUT", |_| {})?;
                        sessions += 1;
                    }
                    Ok(())
                })();
                res.map_err(|e| format!("client {i} ({user}): {e}"))?;
                Ok((commands, sessions))
            },
        ));
    }
    barrier.wait();
    let start = Instant::now();
    let mut total = Mixed {
        commands: 0,
        sessions: 0,
        secs: 0.0,
    };
    let mut first_error = None;
    for th in threads {
        match th.join().map_err(|_| "a mixed-workload thread panicked")? {
            Ok((c, n)) => {
                total.commands += c;
                total.sessions += n;
            }
            Err(e) => {
                first_error.get_or_insert(e);
            }
        }
    }
    total.secs = start.elapsed().as_secs_f64();
    match first_error {
        Some(e) => Err(e.into()),
        None => Ok(total),
    }
}

/// Workload 5: cold logins of fresh users, then re-logins while a session stays open.
/// Returns the LOGIN round trips in ms.
pub fn logins(
    s: &Settings,
    t: &mut Target,
    round: usize,
) -> Result<(Vec<f64>, Vec<f64>), BoxError> {
    let local = Some(IpAddr::V4(Ipv4Addr::LOCALHOST));
    let mut cold = Vec::new();
    for j in 0..s.cold_logins {
        let user = Users::cold(round * s.cold_logins + j);
        let mut c = connect(s, t.imap, local)?;
        cold.push(login(&mut c, &user)?.as_secs_f64() * 1e3);
        c.run("LOGOUT", |_| {})?;
    }
    let mut keeper = connect(s, t.imap, local)?;
    login(&mut keeper, Users::RELOGIN)?;
    let mut re = Vec::new();
    for _ in 0..s.relogins {
        let mut c = connect(s, t.imap, local)?;
        re.push(login(&mut c, Users::RELOGIN)?.as_secs_f64() * 1e3);
        c.run("LOGOUT", |_| {})?;
    }
    keeper.run("LOGOUT", |_| {})?;
    Ok((cold, re))
}

pub fn big_mailbox_labels(s: &Settings) -> Vec<String> {
    let m = s.big_messages;
    vec![
        format!("(4) {m} messages: SELECT INBOX"),
        format!("(4) {m} messages: UID FETCH 1:* (FLAGS)"),
        format!("(4) {m} messages: UID SEARCH UNSEEN"),
        format!("(4) {m} messages: FETCH ENVELOPE, last 50"),
        format!("(4) {m} messages: UID FETCH BODY[], one message"),
    ]
}

/// Workload 4 on the big mailbox, one fresh session: every command timed once.
pub fn big_mailbox(s: &Settings, t: &mut Target) -> Result<Vec<(String, f64)>, BoxError> {
    let m = s.big_messages;
    let labels = big_mailbox_labels(s);
    let ms = |d: Duration| d.as_secs_f64() * 1e3;
    let mut c = connect(s, t.imap, None)?;
    login(&mut c, Users::BIG)?;
    let mut exists = None;
    let took = c.run("SELECT INBOX", |l| {
        if let Some(n) = l
            .strip_prefix(b"* ")
            .and_then(|r| std::str::from_utf8(r).ok())
            .and_then(|r| r.trim_end().strip_suffix(" EXISTS"))
        {
            exists = n.parse::<usize>().ok();
        }
    })?;
    if exists != Some(m) {
        return Err(format!("SELECT said {exists:?} EXISTS, expected {m}").into());
    }
    let mut out = vec![(labels[0].clone(), ms(took))];
    let (mut fetched, mut seen) = (0usize, 0usize);
    let mut uids = Vec::with_capacity(m);
    let took = c.run("UID FETCH 1:* (FLAGS)", |l| {
        if l.starts_with(b"* ") && l.windows(7).any(|w| w == b" FETCH ") {
            fetched += 1;
            if l.windows(5).any(|w| w == b"\\Seen") {
                seen += 1;
            }
            if let Some(at) = l.windows(4).position(|w| w == b"UID ") {
                let digits: Vec<u8> = l[at + 4..]
                    .iter()
                    .copied()
                    .take_while(u8::is_ascii_digit)
                    .collect();
                if let Some(u) = std::str::from_utf8(&digits)
                    .ok()
                    .and_then(|d| d.parse::<u64>().ok())
                {
                    uids.push(u);
                }
            }
        }
    })?;
    if fetched != m || seen != seen_count(m) {
        return Err(format!(
            "UID FETCH 1:* (FLAGS): {fetched} messages, {seen} seen; expected {m}, {}",
            seen_count(m)
        )
        .into());
    }
    out.push((labels[1].clone(), ms(took)));
    let mut hits = None;
    let took = c.run("UID SEARCH UNSEEN", |l| {
        if let Some(rest) = l.strip_prefix(b"* SEARCH") {
            hits = Some(
                rest.split(|c| *c == b' ')
                    .filter(|w| !w.trim_ascii().is_empty())
                    .count(),
            );
        }
    })?;
    if hits != Some(m - seen_count(m)) {
        return Err(format!(
            "UID SEARCH UNSEEN found {hits:?}, expected {}",
            m - seen_count(m)
        )
        .into());
    }
    out.push((labels[2].clone(), ms(took)));
    let first = m.saturating_sub(49).max(1);
    let mut got = 0;
    let took = c.run(&format!("FETCH {first}:{m} (ENVELOPE)"), |l| {
        if l.starts_with(b"* ") && l.windows(9).any(|w| w == b"ENVELOPE ") {
            got += 1;
        }
    })?;
    if got != m - first + 1 {
        return Err(format!(
            "FETCH ENVELOPE gave {got} envelopes, expected {}",
            m - first + 1
        )
        .into());
    }
    out.push((labels[3].clone(), ms(took)));
    let uid = uids.get(m / 2).copied().ok_or("no UIDs from UID FETCH")?;
    let mut got = false;
    let took = c.run(&format!("UID FETCH {uid} (BODY.PEEK[])"), |l| {
        got |= l.windows(8).any(|w| w == b"BODY[] {");
    })?;
    if !got {
        return Err("UID FETCH BODY.PEEK[] returned no body".into());
    }
    out.push((labels[4].clone(), ms(took)));
    c.run("LOGOUT", |_| {})?;
    Ok(out)
}

/// Workload 7: MB/s of `FETCH 1 (BODY.PEEK[])` of the 10 MiB message.
pub fn body_fetch(s: &Settings, t: &mut Target) -> Result<Vec<f64>, BoxError> {
    let expected_tail = message(7, 10 * 1024 * 1024, "ten mebibytes");
    let tail = &expected_tail[expected_tail.len() - 4096..];
    let mut c = connect(s, t.imap, None)?;
    login(&mut c, Users::BODY)?;
    select(&mut c)?;
    let mut rates = Vec::new();
    for _ in 0..s.body_fetches {
        let (mut len, mut ok) = (0usize, false);
        let took = c.run("FETCH 1 (BODY.PEEK[])", |l| {
            if let Some(at) = l.windows(8).position(|w| w == b"BODY[] {") {
                let rest = &l[at + 8..];
                let close = rest.iter().position(|c| *c == b'}').unwrap_or(0);
                len = std::str::from_utf8(&rest[..close])
                    .ok()
                    .and_then(|d| d.parse().ok())
                    .unwrap_or(0);
                let body = rest.get(close + 3..close + 3 + len).unwrap_or(&[]);
                ok = body.ends_with(tail);
            }
        })?;
        if !ok || len < 10 * 1024 * 1024 {
            return Err(format!(
                "FETCH BODY[] of the 10 MiB message returned {len} bytes or other bytes"
            )
            .into());
        }
        rates.push(len as f64 / took.as_secs_f64() / 1e6);
    }
    c.run("LOGOUT", |_| {})?;
    Ok(rates)
}

/// Source address of the `n`-th group of idle connections: 127.0.0.2, 127.0.0.3, ...
fn source_address(n: usize) -> IpAddr {
    let n = n + 2;
    IpAddr::V4(Ipv4Addr::new(127, (n >> 16) as u8, (n >> 8) as u8, n as u8))
}

/// Workload 6: KiB per idle connection (LOGIN, SELECT INBOX, IDLE).
pub fn idle(s: &Settings, t: &mut Target) -> Result<(f64, f64, String), BoxError> {
    let k = s.idle_connections;
    let users = k.div_ceil(Users::IDLE_PER_USER);
    let settle = Duration::from_millis(if s.smoke { 200 } else { 1000 });
    // One LOGIN per user first (Coffer: opens the keyring, which then stays open).
    for u in 0..users {
        let mut c = connect(s, t.imap, None)?;
        login(&mut c, &Users::idle(u))?;
        c.run("LOGOUT", |_| {})?;
    }
    std::thread::sleep(settle);
    let (before, pss_before) = t.session_memory_kib();
    let procs_before = t.imap_processes();
    let start = Instant::now();
    let mut held = Vec::with_capacity(k);
    for i in 0..k {
        let mut c = connect(s, t.imap, Some(source_address(i / Users::IDLE_PER_ADDRESS)))?;
        login(&mut c, &Users::idle(i / Users::IDLE_PER_USER))?;
        c.run("SELECT INBOX", |_| {})?;
        c.start_idle()?;
        held.push(c);
    }
    let open = start.elapsed();
    std::thread::sleep(settle);
    t.check_alive()?;
    let (after, pss_after) = t.session_memory_kib();
    let procs_after = t.imap_processes();
    drop(held);
    let per = (after as f64 - before as f64) / k as f64;
    let pss = (pss_after as f64 - pss_before as f64) / k as f64;
    let detail = format!(
        "{k} connections opened in {:.1} s; RSS {before} → {after} KiB, PSS {pss_before} → {pss_after} KiB{}",
        open.as_secs_f64(),
        if procs_after > 0 || procs_before > 0 {
            format!(" over {procs_before} → {procs_after} imap processes")
        } else {
            String::new()
        }
    );
    Ok((per, pss, detail))
}

/// Single-core AEAD throughput in MB/s: `seal(nonce, chunk)` encrypts one 64 KiB chunk
/// of a 10 MiB buffer in place; one call of the harness seals the whole buffer. Returns
/// the median and the rounds × calls it came from.
fn aead_throughput(smoke: bool, mut seal: impl FnMut([u8; 12], &mut [u8])) -> (f64, String) {
    let mut buf = vec![0u8; 10 * 1024 * 1024];
    let budget = Duration::from_secs_f64(if smoke { 0.05 } else { 2.0 });
    let r = harness::rounds(budget, 5, || {
        for (i, chunk) in buf.chunks_mut(64 * 1024).enumerate() {
            let mut nonce = [0u8; 12];
            nonce[..8].copy_from_slice(&(i as u64).to_le_bytes());
            seal(nonce, chunk);
        }
    });
    let secs = harness::Summary::of(&r.seconds_per_call).median;
    (
        buf.len() as f64 / secs / 1e6,
        format!(
            "median of {} rounds × {} calls",
            r.seconds_per_call.len(),
            r.calls_per_round
        ),
    )
}

/// Single-core ChaCha20-Poly1305 (the AEAD of age's payload, 64 KiB chunks) from the
/// chacha20poly1305 crate (RustCrypto, what the age crate seals with) over a 10 MiB
/// buffer: MB/s on this machine, reported beside [`chacha_ring`] (the target's baseline).
pub fn chacha_rustcrypto(smoke: bool) -> (f64, String) {
    use chacha20poly1305::aead::{AeadInPlace, KeyInit};
    use chacha20poly1305::{ChaCha20Poly1305, Key, Nonce};
    let cipher = ChaCha20Poly1305::new(Key::from_slice(&[7u8; 32]));
    let (mbps, rounds) = aead_throughput(smoke, |nonce, chunk| {
        let tag = cipher
            .encrypt_in_place_detached(Nonce::from_slice(&nonce), b"", chunk)
            .expect("a chunk encrypts");
        std::hint::black_box(tag);
    });
    (
        mbps,
        format!(
            "chacha20poly1305 crate, the same buffer and chunks, {rounds}; for comparison (the age crate seals with it)"
        ),
    )
}

/// The same measurement with ring's ChaCha20-Poly1305 (assembly), which Coffer opens
/// bodies and metadata records with: the baseline of workload 7's target (half of it).
pub fn chacha_ring(smoke: bool) -> (f64, String) {
    use ring::aead::{Aad, CHACHA20_POLY1305, LessSafeKey, Nonce, UnboundKey};
    let key =
        LessSafeKey::new(UnboundKey::new(&CHACHA20_POLY1305, &[7u8; 32]).expect("a 32-byte key"));
    let (mbps, rounds) = aead_throughput(smoke, |nonce, chunk| {
        let tag = key
            .seal_in_place_separate_tag(Nonce::assume_unique_for_key(nonce), Aad::empty(), chunk)
            .expect("a chunk encrypts");
        let _ = std::hint::black_box(tag);
    });
    (
        mbps,
        format!(
            "ring crate, encrypt in place, 64 KiB chunks of a 10 MiB buffer, {rounds}; the target of (7) is half of this"
        ),
    )
}
