//! The LMTP session: LHLO, MAIL, RCPT, DATA, BDAT (RFC 3030 CHUNKING), RSET, NOOP, VRFY,
//! QUIT, with PIPELINING (RFC 2920), ENHANCEDSTATUSCODES (RFC 2034), 8BITMIME and SIZE
//! (RFC 1870). Status codes follow the issue's table: unknown user 550 5.1.1, too large
//! 552 5.3.4, over quota 452 4.2.2, storage failure 451 4.3.0.

use coffer_mail::{InternalDate, Mail, MailError};
use coffer_store::StoreError;
use coffer_types::{MailboxName, UserId, Username};
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;
use tokio::io::{
    AsyncBufRead, AsyncBufReadExt, AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt, BufReader,
};
use tokio::net::{TcpListener, UnixListener};
use tokio_rustls::TlsAcceptor;

/// LMTP settings (from `[lmtp]` and `[limits]` of coffer.toml).
#[derive(Clone, Debug)]
pub struct LmtpConfig {
    /// Name used in the greeting and Received headers.
    pub hostname: String,
    /// Recipient domains delivered here (case-insensitive).
    pub local_domains: Vec<String>,
    /// Largest message accepted (SIZE), in bytes.
    pub max_message_bytes: u64,
    /// Per-user quota in bytes (stored, padded size); 0 = none.
    pub quota_bytes: u64,
    /// Recipients per transaction (RFC 5321 §4.5.3.1.8 asks for at least 100).
    pub max_recipients: usize,
    /// Longest command line (RFC 5321 §4.5.3.1.4: 512 octets).
    pub max_command_line: usize,
    /// Deliver `user+tag@domain` into the mailbox named `tag` if it exists (as Dovecot's
    /// lmtp_save_to_detail_mailbox).
    pub save_to_detail_mailbox: bool,
    /// Inactivity before the server closes the connection (RFC 5321 §4.5.3.2.7: 5 min).
    pub timeout: Duration,
    /// Concurrent connections.
    pub max_connections: usize,
}

impl Default for LmtpConfig {
    fn default() -> Self {
        LmtpConfig {
            hostname: "localhost".into(),
            local_domains: vec!["localhost".into()],
            max_message_bytes: coffer_mail::DEFAULT_MAX_MESSAGE_BYTES,
            quota_bytes: 0,
            max_recipients: 100,
            max_command_line: 512,
            save_to_detail_mailbox: true,
            timeout: Duration::from_secs(300),
            max_connections: 200,
        }
    }
}

/// A resolved recipient.
#[derive(Clone, Debug)]
pub struct Recipient {
    /// The address as the client gave it (for Delivered-To).
    pub address: String,
    pub user: UserId,
    /// The detail (`tag` of `user+tag@domain`) as a mailbox name, if any.
    pub detail: Option<MailboxName>,
}

#[derive(Debug, PartialEq, Eq)]
pub enum ResolveError {
    Syntax,
    NotLocal,
    NoSuchUser,
    /// The store could not be asked: a temporary failure, never "unknown user" (an MTA
    /// would bounce the mail instead of retrying it).
    Unavailable,
}

/// Maps an address to a user: the full address if such a user exists, else the local part
/// (without `+detail`) when the domain is local. Unknown users look the same either way.
pub async fn resolve_recipient(
    mail: &Mail,
    config: &LmtpConfig,
    address: &str,
) -> Result<Recipient, ResolveError> {
    let address = address.trim();
    let (local, domain) = match address.rsplit_once('@') {
        Some((l, d)) => (l, Some(d)),
        None => (address, None),
    };
    if local.is_empty() || local.len() > 255 {
        return Err(ResolveError::Syntax);
    }
    let (base, detail) = match local.split_once('+') {
        Some((b, d)) => (b, Some(d)),
        None => (local, None),
    };
    let store = mail.vault().store();
    let pepper = mail.vault().pepper();
    let exists = |name: String| async move {
        let Ok(u) = Username::new(&name) else {
            return Ok(None);
        };
        let id = pepper.user_id(&u);
        match store.get_account(&id).await {
            Ok(Some(_)) => Ok(Some(id)),
            Ok(None) => Ok(None),
            Err(_) => Err(ResolveError::Unavailable),
        }
    };
    let local_domain = domain.is_none_or(|d| {
        config
            .local_domains
            .iter()
            .any(|x| x.eq_ignore_ascii_case(d))
    });
    let mut found = None;
    if let Some(d) = domain {
        found = exists(format!("{base}@{d}")).await?;
    }
    if found.is_none() {
        if !local_domain {
            return Err(ResolveError::NotLocal);
        }
        found = exists(base.to_string()).await?;
    }
    let user = found.ok_or(ResolveError::NoSuchUser)?;
    let detail = if config.save_to_detail_mailbox {
        detail.and_then(|d| MailboxName::new(d).ok())
    } else {
        None
    };
    Ok(Recipient {
        address: address.to_string(),
        user,
        detail,
    })
}

fn rfc5322_date(ts: i64) -> String {
    const DAYS: [&str; 7] = ["Thu", "Fri", "Sat", "Sun", "Mon", "Tue", "Wed"];
    const MONTHS: [&str; 12] = [
        "Jan", "Feb", "Mar", "Apr", "May", "Jun", "Jul", "Aug", "Sep", "Oct", "Nov", "Dec",
    ];
    let days = ts.div_euclid(86_400);
    let secs = ts.rem_euclid(86_400);
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z - era * 146_097;
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let y = yoe + era * 400;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = doy - (153 * mp + 2) / 5 + 1;
    let m = if mp < 10 { mp + 3 } else { mp - 9 };
    let y = if m <= 2 { y + 1 } else { y };
    format!(
        "{}, {d} {} {y} {:02}:{:02}:{:02} +0000",
        DAYS[days.rem_euclid(7) as usize],
        MONTHS[(m - 1) as usize],
        secs / 3600,
        secs % 3600 / 60,
        secs % 60
    )
}

/// Prepends Return-Path, Delivered-To and Received, as Dovecot's LMTP does.
pub fn add_trace_headers(body: &[u8], sender: &str, recipient: &str, received: &str) -> Vec<u8> {
    let mut out = Vec::with_capacity(body.len() + 256);
    out.extend_from_slice(format!("Return-Path: <{sender}>\r\n").as_bytes());
    out.extend_from_slice(format!("Delivered-To: {recipient}\r\n").as_bytes());
    out.extend_from_slice(received.as_bytes());
    out.extend_from_slice(body);
    out
}

struct Transaction {
    sender: Option<String>,
    recipients: Vec<Recipient>,
    chunks: Vec<u8>,
    bdat_failed: bool,
}

impl Transaction {
    fn new() -> Self {
        Transaction {
            sender: None,
            recipients: Vec::new(),
            chunks: Vec::new(),
            bdat_failed: false,
        }
    }
}

struct Session<S> {
    mail: Mail,
    config: Arc<LmtpConfig>,
    peer: String,
    r: BufReader<S>,
    /// Replies not yet written: flushed when no pipelined input is waiting.
    out: Vec<u8>,
    lhlo: Option<String>,
    tx: Transaction,
    /// STARTTLS (RFC 3207) is offered: a TCP connection not yet encrypted.
    starttls: bool,
    /// Send the 220 greeting (not after STARTTLS, RFC 3207 §4.2).
    greet: bool,
}

enum Line {
    Ok(Vec<u8>),
    TooLong,
    Eof,
}

async fn read_line_limited<R: AsyncBufRead + Unpin>(
    r: &mut R,
    max: usize,
) -> std::io::Result<Line> {
    let mut out = Vec::new();
    loop {
        let buf = r.fill_buf().await?;
        if buf.is_empty() {
            return Ok(Line::Eof);
        }
        let (n, done) = match buf.iter().position(|c| *c == b'\n') {
            Some(i) => (i + 1, true),
            None => (buf.len(), false),
        };
        if out.len() + n > max + 2 {
            // Skip the rest of the overlong line so the session can go on.
            let take = n;
            r.consume(take);
            if done {
                return Ok(Line::TooLong);
            }
            loop {
                let buf = r.fill_buf().await?;
                if buf.is_empty() {
                    return Ok(Line::Eof);
                }
                match buf.iter().position(|c| *c == b'\n') {
                    Some(i) => {
                        r.consume(i + 1);
                        return Ok(Line::TooLong);
                    }
                    None => {
                        let n = buf.len();
                        r.consume(n);
                    }
                }
            }
        }
        out.extend_from_slice(&buf[..n]);
        r.consume(n);
        if done {
            out.pop();
            if out.last() == Some(&b'\r') {
                out.pop();
            }
            return Ok(Line::Ok(out));
        }
    }
}

fn parse_path(arg: &str, keyword: &str) -> Option<(String, String)> {
    let rest = arg
        .get(..keyword.len())
        .filter(|k| k.eq_ignore_ascii_case(keyword))
        .map(|_| &arg[keyword.len()..])?;
    let rest = rest.trim_start();
    let rest = rest.strip_prefix('<')?;
    let end = rest.find('>')?;
    let addr = rest[..end].to_string();
    if addr.chars().any(|c| c.is_control() || c == ' ') {
        return None;
    }
    Some((addr, rest[end + 1..].trim().to_string()))
}

impl<S: AsyncRead + AsyncWrite + Unpin> Session<S> {
    async fn reply(&mut self, text: &str) -> std::io::Result<()> {
        self.out.extend_from_slice(text.as_bytes());
        self.out.extend_from_slice(b"\r\n");
        Ok(())
    }

    async fn flush(&mut self) -> std::io::Result<()> {
        if !self.out.is_empty() {
            let w = self.r.get_mut();
            w.write_all(&self.out).await?;
            w.flush().await?;
            self.out.clear();
        }
        Ok(())
    }

    /// Runs the session; returns the raw stream when the client asked for STARTTLS.
    async fn run(mut self) -> std::io::Result<Option<S>> {
        if self.greet {
            self.reply(&format!("220 {} Coffer LMTP ready", self.config.hostname))
                .await?;
        }
        self.flush().await?;
        loop {
            // PIPELINING: answers are flushed only when no more input is waiting.
            if self.r.buffer().is_empty() {
                self.flush().await?;
            }
            let line = match tokio::time::timeout(
                self.config.timeout,
                read_line_limited(&mut self.r, self.config.max_command_line),
            )
            .await
            {
                Err(_) => {
                    self.reply("421 4.4.2 Timeout, closing connection").await?;
                    break;
                }
                Ok(l) => l?,
            };
            let line = match line {
                Line::Eof => break,
                Line::TooLong => {
                    self.reply("500 5.5.2 Line too long").await?;
                    continue;
                }
                Line::Ok(l) => l,
            };
            let Ok(text) = String::from_utf8(line) else {
                self.reply("500 5.5.2 Command is not valid UTF-8").await?;
                continue;
            };
            let (verb, arg) = match text.split_once(' ') {
                Some((v, a)) => (v.to_ascii_uppercase(), a.trim().to_string()),
                None => (text.trim().to_ascii_uppercase(), String::new()),
            };
            match verb.as_str() {
                "LHLO" => {
                    if arg.is_empty() {
                        self.reply("501 5.5.4 LHLO needs a host name").await?;
                        continue;
                    }
                    self.lhlo = Some(arg.chars().filter(|c| !c.is_control()).take(255).collect());
                    self.tx = Transaction::new();
                    let h = self.config.hostname.clone();
                    let size = self.config.max_message_bytes;
                    self.reply(&format!("250-{h}\r\n250-PIPELINING\r\n250-ENHANCEDSTATUSCODES\r\n250-8BITMIME\r\n250-SIZE {size}\r\n{}250 CHUNKING", if self.starttls { "250-STARTTLS\r\n" } else { "" })).await?;
                }
                "HELO" | "EHLO" => self.reply("500 5.5.1 This is LMTP: use LHLO").await?,
                "MAIL" => self.mail_from(&arg).await?,
                "RCPT" => self.rcpt_to(&arg).await?,
                "DATA" => self.data().await?,
                "BDAT" => self.bdat(&arg).await?,
                "RSET" => {
                    self.tx = Transaction::new();
                    self.reply("250 2.0.0 OK").await?;
                }
                "NOOP" => self.reply("250 2.0.0 OK").await?,
                // RFC 5321 §3.5.3: answer 252 rather than disclose which users exist.
                "VRFY" => {
                    self.reply("252 2.5.0 Cannot VRFY user; send the message and see")
                        .await?
                }
                "QUIT" => {
                    self.reply(&format!(
                        "221 2.0.0 {} closing connection",
                        self.config.hostname
                    ))
                    .await?;
                    self.flush().await?;
                    break;
                }
                "STARTTLS" => {
                    if !self.starttls {
                        self.reply("502 5.5.1 STARTTLS is not offered here").await?;
                    } else if self.tx.sender.is_some() {
                        self.reply("503 5.5.1 STARTTLS inside a transaction")
                            .await?;
                    } else {
                        self.reply("220 2.0.0 Ready to start TLS").await?;
                        self.flush().await?;
                        // Whatever the client pipelined after STARTTLS is dropped with the
                        // buffer (RFC 3207 §4.2 requires discarding it).
                        return Ok(Some(self.r.into_inner()));
                    }
                }
                "" => self.reply("500 5.5.2 Empty command").await?,
                _ => self.reply("500 5.5.1 Unknown command").await?,
            }
        }
        self.flush().await?;
        Ok(None)
    }

    async fn mail_from(&mut self, arg: &str) -> std::io::Result<()> {
        if self.lhlo.is_none() {
            return self.reply("503 5.5.1 Send LHLO first").await;
        }
        if self.tx.sender.is_some() {
            return self.reply("503 5.5.1 Nested MAIL command").await;
        }
        let Some((sender, params)) = parse_path(arg, "FROM:") else {
            return self.reply("501 5.5.4 Syntax: MAIL FROM:<address>").await;
        };
        for p in params.split_whitespace() {
            let (k, v) = p.split_once('=').unwrap_or((p, ""));
            match k.to_ascii_uppercase().as_str() {
                "SIZE" => match v.parse::<u64>() {
                    Ok(n) if n > self.config.max_message_bytes => {
                        return self
                            .reply("552 5.3.4 Message size exceeds fixed maximum message size")
                            .await;
                    }
                    Ok(_) => {}
                    Err(_) => return self.reply("501 5.5.4 Invalid SIZE").await,
                },
                "BODY" => {
                    if !v.eq_ignore_ascii_case("7BIT")
                        && !v.eq_ignore_ascii_case("8BITMIME")
                        && !v.eq_ignore_ascii_case("BINARYMIME")
                    {
                        return self.reply("501 5.5.4 Invalid BODY").await;
                    }
                }
                _ => return self.reply("555 5.5.4 Unsupported MAIL parameter").await,
            }
        }
        self.tx = Transaction::new();
        self.tx.sender = Some(sender);
        self.reply("250 2.1.0 OK").await
    }

    async fn rcpt_to(&mut self, arg: &str) -> std::io::Result<()> {
        if self.tx.sender.is_none() {
            return self.reply("503 5.5.1 Send MAIL first").await;
        }
        let Some((address, params)) = parse_path(arg, "TO:") else {
            return self.reply("501 5.5.4 Syntax: RCPT TO:<address>").await;
        };
        if !params.is_empty() {
            return self.reply("555 5.5.4 Unsupported RCPT parameter").await;
        }
        if self.tx.recipients.len() >= self.config.max_recipients {
            return self.reply("452 4.5.3 Too many recipients").await;
        }
        match resolve_recipient(&self.mail, &self.config, &address).await {
            Ok(r) => {
                if self.config.quota_bytes > 0 {
                    let used = self
                        .mail
                        .vault()
                        .store()
                        .stored_bytes(&r.user)
                        .await
                        .unwrap_or(0);
                    if used >= self.config.quota_bytes {
                        return self.reply("452 4.2.2 Mailbox is over quota").await;
                    }
                }
                self.tx.recipients.push(r);
                self.reply("250 2.1.5 OK").await
            }
            Err(ResolveError::Syntax) => self.reply("501 5.1.3 Bad recipient address syntax").await,
            Err(ResolveError::NotLocal) => self.reply("550 5.1.2 Domain is not local").await,
            Err(ResolveError::NoSuchUser) => self.reply("550 5.1.1 User unknown").await,
            Err(ResolveError::Unavailable) => {
                self.reply("451 4.3.0 Temporary failure, try again later")
                    .await
            }
        }
    }

    /// Reads a dot-terminated message (RFC 5321 §4.5.2), undoing dot-stuffing and turning
    /// bare LF line ends into CRLF. Returns None if the client went away mid-message, and
    /// Err(size) when it exceeded the limit (read to the end all the same).
    async fn read_data(&mut self) -> std::io::Result<Option<Result<Vec<u8>, ()>>> {
        let max = self.config.max_message_bytes as usize;
        let mut body = Vec::new();
        let mut too_big = false;
        // The line being read. It never holds more than what still fits in the message
        // (plus its line end and a leading dot): a longer line makes the message too big,
        // and of the rest of the message only enough is kept to see the final ".".
        let mut line: Vec<u8> = Vec::new();
        let mut cut = false;
        loop {
            // A timeout only when bytes must be waited for: one per line was a measurable
            // share of the CPU time of receiving large messages.
            if self.r.buffer().is_empty() {
                let n = tokio::time::timeout(self.config.timeout, self.r.fill_buf())
                    .await
                    .map_err(|_| {
                        std::io::Error::new(std::io::ErrorKind::TimedOut, "data timeout")
                    })??
                    .len();
                if n == 0 {
                    return Ok(None);
                }
            }
            let buf = self.r.buffer();
            let (n, done) = match memchr::memchr(b'\n', buf) {
                Some(i) => (i + 1, true),
                None => (buf.len(), false),
            };
            let cap = if too_big {
                3
            } else {
                max.saturating_sub(body.len()) + 3
            };
            let room = cap.saturating_sub(line.len());
            line.extend_from_slice(&buf[..n.min(room)]);
            cut |= n > room;
            self.r.consume(n);
            if !done {
                continue;
            }
            if cut && !too_big {
                too_big = true;
                body = Vec::new();
            }
            let mut content = line.as_slice();
            content = content.strip_suffix(b"\n").unwrap_or(content);
            content = content.strip_suffix(b"\r").unwrap_or(content);
            if content == b"." && !cut {
                break;
            }
            let content = content.strip_prefix(b".").unwrap_or(content);
            if !too_big {
                if body.len() + content.len() + 2 > max {
                    too_big = true;
                    body = Vec::new();
                } else {
                    body.extend_from_slice(content);
                    body.extend_from_slice(b"\r\n");
                }
            }
            line.clear();
            cut = false;
        }
        Ok(Some(if too_big { Err(()) } else { Ok(body) }))
    }

    async fn data(&mut self) -> std::io::Result<()> {
        if self.tx.sender.is_none() {
            return self.reply("503 5.5.1 Send MAIL first").await;
        }
        if self.tx.recipients.is_empty() {
            return self.reply("503 5.5.1 No valid recipients").await;
        }
        if !self.tx.chunks.is_empty() {
            return self.reply("503 5.5.1 DATA after BDAT").await;
        }
        self.reply("354 2.0.0 Send message; end with <CRLF>.<CRLF>")
            .await?;
        self.flush().await?;
        match self.read_data().await? {
            // The client went away mid-message: nothing is delivered.
            None => Err(std::io::ErrorKind::UnexpectedEof.into()),
            Some(Err(())) => {
                let n = self.tx.recipients.len();
                for _ in 0..n {
                    self.reply("552 5.3.4 Message size exceeds fixed maximum message size")
                        .await?;
                }
                self.tx = Transaction::new();
                Ok(())
            }
            Some(Ok(body)) => self.deliver_all(body).await,
        }
    }

    async fn bdat(&mut self, arg: &str) -> std::io::Result<()> {
        let mut parts = arg.split_whitespace();
        let size = parts.next().and_then(|s| s.parse::<u64>().ok());
        let last = parts.next().map(|s| s.eq_ignore_ascii_case("LAST"));
        let Some(size) = size.filter(|_| parts.next().is_none() && last != Some(false)) else {
            return self.reply("501 5.5.4 Syntax: BDAT size [LAST]").await;
        };
        let last = last.unwrap_or(false);
        // The chunk is on the way whatever we answer: read (or skip) it first.
        let max = self.config.max_message_bytes;
        let keep = !self.tx.bdat_failed
            && (self.tx.chunks.len() as u64 + size) <= max
            && self.tx.sender.is_some()
            && !self.tx.recipients.is_empty();
        if keep {
            let at = self.tx.chunks.len();
            self.tx.chunks.resize(at + size as usize, 0);
            tokio::time::timeout(
                self.config.timeout,
                self.r.read_exact(&mut self.tx.chunks[at..]),
            )
            .await
            .map_err(|_| std::io::Error::new(std::io::ErrorKind::TimedOut, "BDAT timeout"))??;
        } else {
            let mut left = size;
            let mut sink = [0u8; 8192];
            while left > 0 {
                let n = (left as usize).min(sink.len());
                self.r.read_exact(&mut sink[..n]).await?;
                left -= n as u64;
            }
        }
        if self.tx.sender.is_none() {
            return self.reply("503 5.5.1 Send MAIL first").await;
        }
        if self.tx.recipients.is_empty() {
            return self.reply("503 5.5.1 No valid recipients").await;
        }
        if !keep {
            self.tx.bdat_failed = true;
            self.tx.chunks = Vec::new();
        }
        if !last {
            if self.tx.bdat_failed {
                return self
                    .reply("552 5.3.4 Message size exceeds fixed maximum message size")
                    .await;
            }
            return self
                .reply(&format!("250 2.0.0 {size} octets received"))
                .await;
        }
        if self.tx.bdat_failed {
            let n = self.tx.recipients.len();
            for _ in 0..n {
                self.reply("552 5.3.4 Message size exceeds fixed maximum message size")
                    .await?;
            }
            self.tx = Transaction::new();
            return Ok(());
        }
        let body = std::mem::take(&mut self.tx.chunks);
        self.deliver_all(body).await
    }

    /// Delivers to every accepted recipient and answers once per recipient, in order.
    async fn deliver_all(&mut self, body: Vec<u8>) -> std::io::Result<()> {
        let sender = self.tx.sender.clone().unwrap_or_default();
        let recipients = std::mem::take(&mut self.tx.recipients);
        let id = coffer_types::hex(&rand::random::<[u8; 8]>());
        let now = InternalDate::now();
        let received = format!(
            "Received: from {} ({})\r\n\tby {} (Coffer) with LMTP id {id};\r\n\t{}\r\n",
            self.lhlo.as_deref().unwrap_or("unknown"),
            self.peer,
            self.config.hostname,
            rfc5322_date(now.timestamp)
        );
        for r in &recipients {
            let message = add_trace_headers(&body, &sender, &r.address, &received);
            if self.config.quota_bytes > 0 {
                let used = self
                    .mail
                    .vault()
                    .store()
                    .stored_bytes(&r.user)
                    .await
                    .unwrap_or(0);
                if used + message.len() as u64 > self.config.quota_bytes {
                    self.reply("452 4.2.2 Mailbox is over quota").await?;
                    continue;
                }
            }
            match self
                .mail
                .deliver(&r.user, r.detail.as_ref(), message, now)
                .await
            {
                Ok(_) => {
                    self.reply(&format!("250 2.0.0 <{}> {id} Saved", r.address))
                        .await?
                }
                Err(MailError::TooLarge(_)) => {
                    self.reply("552 5.3.4 Message size exceeds fixed maximum message size")
                        .await?
                }
                Err(MailError::NoSuchUser) => self.reply("550 5.1.1 User unknown").await?,
                Err(MailError::Store(StoreError::DiskFull(_))) => {
                    self.reply("452 4.3.1 Insufficient system storage").await?
                }
                Err(e) => {
                    tracing::warn!(error = %e, "delivery failed");
                    self.reply("451 4.3.0 Temporary failure, try again later")
                        .await?;
                }
            }
        }
        tracing::info!(recipients = recipients.len(), id, "lmtp delivery");
        self.tx = Transaction::new();
        Ok(())
    }
}

fn session<S: AsyncRead + AsyncWrite + Unpin>(
    mail: Mail,
    config: Arc<LmtpConfig>,
    peer: String,
    stream: S,
    starttls: bool,
    greet: bool,
) -> Session<S> {
    Session {
        mail,
        config,
        peer,
        r: BufReader::with_capacity(16 * 1024, stream),
        out: Vec::new(),
        lhlo: None,
        tx: Transaction::new(),
        starttls,
        greet,
    }
}

async fn run_session<S: AsyncRead + AsyncWrite + Unpin>(
    mail: Mail,
    config: Arc<LmtpConfig>,
    peer: String,
    stream: S,
) {
    let _ = session(mail, config, peer, stream, false, true).run().await;
}

/// A TCP session, upgraded to TLS when the client asks for STARTTLS.
async fn run_tcp(
    mail: Mail,
    config: Arc<LmtpConfig>,
    peer: String,
    stream: tokio::net::TcpStream,
    tls: Option<TlsAcceptor>,
) {
    let plain = session(
        mail.clone(),
        config.clone(),
        peer.clone(),
        stream,
        tls.is_some(),
        true,
    );
    let Ok(Some(tcp)) = plain.run().await else {
        return;
    };
    let Some(acceptor) = tls else { return };
    if let Ok(Ok(encrypted)) =
        tokio::time::timeout(Duration::from_secs(30), acceptor.accept(tcp)).await
    {
        let _ = session(mail, config, peer, encrypted, false, false)
            .run()
            .await;
    }
}

/// Serves LMTP on a TCP listener until `shutdown` fires.
pub async fn serve_tcp(
    mail: Mail,
    config: Arc<LmtpConfig>,
    listener: TcpListener,
    shutdown: tokio::sync::watch::Receiver<bool>,
) {
    serve_tcp_with_tls(mail, config, listener, None, shutdown).await
}

/// Serves LMTP on a TCP listener, offering STARTTLS with `tls` (RFC 3207), so LMTP over
/// a network can be encrypted (CRYPTO.md T5).
pub async fn serve_tcp_with_tls(
    mail: Mail,
    config: Arc<LmtpConfig>,
    listener: TcpListener,
    tls: Option<TlsAcceptor>,
    mut shutdown: tokio::sync::watch::Receiver<bool>,
) {
    let permits = Arc::new(tokio::sync::Semaphore::new(config.max_connections));
    loop {
        tokio::select! {
            accepted = listener.accept() => {
                let Ok((stream, peer)) = accepted else { continue };
                let Ok(permit) = permits.clone().try_acquire_owned() else {
                    let mut s = stream;
                    let _ = s.write_all(b"421 4.3.2 Too many connections, try later\r\n").await;
                    continue;
                };
                let _ = stream.set_nodelay(true);
                let (mail, config, tls) = (mail.clone(), config.clone(), tls.clone());
                tokio::spawn(async move {
                    run_tcp(mail, config, peer_text(peer), stream, tls).await;
                    drop(permit);
                });
            }
            _ = shutdown.changed() => break,
        }
    }
}

fn peer_text(peer: SocketAddr) -> String {
    format!("[{}]", peer.ip())
}

/// Serves LMTP on a unix socket (Postfix's `lmtp:unix:`) until `shutdown` fires.
pub async fn serve_unix(
    mail: Mail,
    config: Arc<LmtpConfig>,
    listener: UnixListener,
    mut shutdown: tokio::sync::watch::Receiver<bool>,
) {
    let permits = Arc::new(tokio::sync::Semaphore::new(config.max_connections));
    loop {
        tokio::select! {
            accepted = listener.accept() => {
                let Ok((stream, _)) = accepted else { continue };
                let Ok(permit) = permits.clone().try_acquire_owned() else { continue };
                let (mail, config) = (mail.clone(), config.clone());
                tokio::spawn(async move {
                    run_session(mail, config, "local".into(), stream).await;
                    drop(permit);
                });
            }
            _ = shutdown.changed() => break,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn paths_parse() {
        assert_eq!(
            parse_path("FROM:<a@b>", "FROM:"),
            Some(("a@b".into(), String::new()))
        );
        assert_eq!(
            parse_path("from: <a@b> SIZE=10", "FROM:"),
            Some(("a@b".into(), "SIZE=10".into()))
        );
        assert_eq!(
            parse_path("FROM:<>", "FROM:"),
            Some((String::new(), String::new()))
        );
        assert_eq!(parse_path("FROM:a@b", "FROM:"), None);
        assert_eq!(parse_path("TO:<a b@c>", "TO:"), None);
    }

    #[test]
    fn dates() {
        assert_eq!(rfc5322_date(0), "Thu, 1 Jan 1970 00:00:00 +0000");
        assert_eq!(
            rfc5322_date(1_700_000_000),
            "Tue, 14 Nov 2023 22:13:20 +0000"
        );
    }
}
