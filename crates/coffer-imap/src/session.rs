//! The session state machine (RFC 9051 §3): not authenticated → authenticated → selected
//! → logout, the dispatch of parsed commands to their handlers (`cmd_*` modules), and the
//! untagged updates that tell a client what other sessions changed (RFC 9051 §7.5.1).

use crate::connection::{read_command, read_line, Frame, Io, Reader};
use crate::parse::parse_framed;
use crate::server::Ctx;
use crate::types::{Command, CommandBody};
use coffer_mail::{FlagsEntry, MailError, Mailbox};
use coffer_types::{Flag, MailboxId, MailboxName};
use coffer_vault::{Purpose, Unlocked, VaultError};
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};
use tokio::io::{AsyncWriteExt, BufReader};
use tokio::sync::broadcast;

/// Buffered responses of the command being answered, flushed as they grow.
pub struct Out<'a> {
    pub(crate) r: &'a mut Reader,
    pub(crate) buf: Vec<u8>,
}

impl Out<'_> {
    pub fn line(&mut self, s: &str) {
        self.buf.extend_from_slice(s.as_bytes());
        self.buf.extend_from_slice(b"\r\n");
    }
    pub fn bytes(&mut self, b: &[u8]) {
        self.buf.extend_from_slice(b);
    }
    /// Appends a whole buffer, moving it instead of copying when nothing is pending.
    pub fn take(&mut self, b: Vec<u8>) {
        if self.buf.is_empty() {
            self.buf = b;
        } else {
            self.buf.extend_from_slice(&b);
        }
    }
    /// Writes out what is buffered if it is large (big FETCH answers stream).
    pub async fn maybe_flush(&mut self) -> std::io::Result<()> {
        if self.buf.len() >= 256 * 1024 {
            self.flush().await?;
        }
        Ok(())
    }
    /// Writes `b` straight to the connection after what is buffered (a streamed literal),
    /// without copying it into the buffer.
    pub async fn write_direct(&mut self, b: &[u8]) -> std::io::Result<()> {
        self.flush().await?;
        write_now(self.r, b).await
    }
    pub async fn flush(&mut self) -> std::io::Result<()> {
        if !self.buf.is_empty() {
            write_now(self.r, &self.buf).await?;
            self.buf.clear();
        }
        Ok(())
    }
}

/// The result of a command handler.
pub enum Done {
    /// Tagged response text (e.g. "OK [READ-WRITE] SELECT completed").
    Tagged(String),
    StartTls,
    /// COMPRESS DEFLATE accepted: switch the stream after the tagged OK.
    Compress,
    Idle,
    Logout,
    /// Untagged BYE and close.
    Bye(String),
    /// Close at once, writing nothing more: a literal already begun was cut short (a
    /// streamed body failed), and any text now would be read as the literal's bytes.
    Abort,
}

impl Done {
    pub fn ok(text: &str) -> Done {
        Done::Tagged(format!("OK {text}"))
    }
    pub fn no(text: &str) -> Done {
        Done::Tagged(format!("NO {text}"))
    }
    pub fn bad(text: &str) -> Done {
        Done::Tagged(format!("BAD {text}"))
    }
}

/// One message in the selected mailbox, as this session has told the client about it: the
/// keyring's cached view entry (`coffer_mail::FlagsEntry`), so that SELECT of an unchanged
/// mailbox shares the cached view instead of copying it (see [`Selected::view`]).
pub use coffer_mail::FlagsEntry as ViewMsg;

/// The selected mailbox (exists only in the selected state).
pub struct Selected {
    pub mailbox: Mailbox,
    pub read_only: bool,
    /// Index + 1 is the message sequence number. Shared with the keyring's view cache
    /// until this session changes it (`Arc::make_mut` copies it then): a SELECT of a
    /// 100,000-message mailbox costs no per-message work.
    pub view: Arc<Vec<ViewMsg>>,
    pub highest_modseq: u64,
    pub uid_next: u32,
    /// Expunged by another session but not yet announced (sequence numbers still valid).
    pub pending_expunge: Vec<u32>,
}

impl Selected {
    pub fn seq_of(&self, uid: u32) -> Option<usize> {
        self.view
            .binary_search_by_key(&uid, |m| m.uid.get())
            .ok()
            .map(|i| i + 1)
    }
    pub fn max_uid(&self) -> u32 {
        self.view.last().map(|m| m.uid.get()).unwrap_or(0)
    }

    /// Takes the messages with these UIDs out of the view in one pass (copying a view
    /// shared with the keyring's cache once) and returns what the client must be told:
    /// `* VANISHED` under QRESYNC (RFC 7162 §3.2.10), otherwise one `* n EXPUNGE` per
    /// message, highest sequence number first so that the lower ones stay valid (RFC 9051
    /// §7.5.1). Nothing when none of them is in the view.
    pub fn remove_uids(&mut self, uids: &[u32], qresync: bool) -> Vec<u8> {
        let mut gone = uids.to_vec();
        gone.sort_unstable();
        let is_gone = |m: &ViewMsg| gone.binary_search(&m.uid.get()).is_ok();
        let seqs: Vec<usize> = (0..self.view.len())
            .rev()
            .filter(|&i| is_gone(&self.view[i]))
            .map(|i| i + 1)
            .collect();
        if seqs.is_empty() {
            return Vec::new();
        }
        Arc::make_mut(&mut self.view).retain(|m| !is_gone(m));
        if qresync {
            format!("* VANISHED {}\r\n", uid_set_text(uids)).into_bytes()
        } else {
            seqs.iter()
                .flat_map(|n| format!("* {n} EXPUNGE\r\n").into_bytes())
                .collect()
        }
    }
}

pub struct Session {
    pub(crate) ctx: Arc<Ctx>,
    pub(crate) peer: SocketAddr,
    pub(crate) tls: bool,
    pub(crate) user: Option<Unlocked>,
    pub(crate) changes: Option<broadcast::Receiver<MailboxId>>,
    pub(crate) selected: Option<Selected>,
    /// UTF-8 mailbox names and strings (IMAP4rev2 or UTF8=ACCEPT enabled).
    pub(crate) utf8: bool,
    pub(crate) rev2: bool,
    pub(crate) condstore: bool,
    pub(crate) qresync: bool,
    errors: u32,
    /// Whether the command being answered may be followed by EXPUNGE responses: not after
    /// FETCH, STORE or SEARCH by sequence number (RFC 9051 §7.5.1).
    expunge_ok: bool,
    compressed: bool,
    /// When the account (lock key, key generation) was last read from the store:
    /// the external epoch and the time. See [`Session::account_still_valid`].
    account_checked: Option<(u64, Instant)>,
    /// The same for the selected mailbox's counters ([`Session::sync_selected`]).
    mailbox_checked: Option<(u64, Instant)>,
    /// The command being answered is one clients poll with (NOOP, CHECK): read the store.
    poll_now: bool,
}

fn map_mail_error(e: &MailError) -> Done {
    match e {
        MailError::NoSuchMailbox => Done::no("[NONEXISTENT] No such mailbox"),
        MailError::MailboxExists => Done::no("[ALREADYEXISTS] Mailbox already exists"),
        MailError::HasChildren => Done::no("[HASCHILDREN] Mailbox has children, delete them first"),
        MailError::NotAllowed(why) => Done::no(&format!("[CANNOT] {why}")),
        MailError::InvalidName(why) => Done::no(&format!("[CANNOT] Invalid mailbox name: {why}")),
        MailError::TooLarge(limit) => {
            Done::no(&format!("[TOOBIG] Message is larger than {limit} bytes"))
        }
        MailError::Locked(_) | MailError::Vault(VaultError::Locked(_)) => {
            Done::Bye("Mailbox locked; log in again".into())
        }
        MailError::Tampered(_) => Done::no("[CORRUPTION] Stored data failed authentication"),
        MailError::Store(coffer_store::StoreError::DiskFull(_)) => {
            Done::no("[OVERQUOTA] Server storage is full")
        }
        MailError::Store(coffer_store::StoreError::Unavailable(_)) => {
            Done::no("[UNAVAILABLE] Storage is unavailable, try again")
        }
        _ => Done::no("[SERVERBUG] Internal error"),
    }
}

pub(crate) fn mail_err(e: MailError) -> Done {
    if !matches!(
        e,
        MailError::NoSuchMailbox
            | MailError::MailboxExists
            | MailError::HasChildren
            | MailError::NotAllowed(_)
    ) {
        tracing::warn!(error = %e, "mail operation failed");
    }
    map_mail_error(&e)
}

impl Session {
    pub fn new(ctx: Arc<Ctx>, peer: SocketAddr, tls: bool) -> Session {
        Session {
            ctx,
            peer,
            tls,
            user: None,
            changes: None,
            selected: None,
            utf8: false,
            rev2: false,
            condstore: false,
            qresync: false,
            errors: 0,
            expunge_ok: true,
            compressed: false,
            account_checked: None,
            mailbox_checked: None,
            poll_now: false,
        }
    }

    pub(crate) fn login_allowed(&self) -> bool {
        self.tls
            || (self.ctx.config.allow_plaintext_login_on_loopback && self.peer.ip().is_loopback())
    }

    pub(crate) fn capabilities(&self) -> String {
        let mut caps = vec![
            "IMAP4rev1",
            "IMAP4rev2",
            "SASL-IR",
            "LITERAL+",
            "ID",
            "ENABLE",
            "IDLE",
        ];
        if self.user.is_none() {
            if !self.tls && self.ctx.tls.is_some() {
                caps.push("STARTTLS");
            }
            if self.login_allowed() {
                caps.push("AUTH=PLAIN");
            } else {
                caps.push("LOGINDISABLED");
            }
            return caps.join(" ");
        }
        caps.extend([
            "NAMESPACE",
            "UIDPLUS",
            "MOVE",
            "UNSELECT",
            "CHILDREN",
            "SPECIAL-USE",
            "CREATE-SPECIAL-USE",
            "LIST-EXTENDED",
            "LIST-STATUS",
            "CONDSTORE",
            "QRESYNC",
            "ESEARCH",
            "STATUS=SIZE",
            "UTF8=ACCEPT",
            "BINARY",
            "MULTIAPPEND",
            "QUOTA",
            "QUOTA=RES-STORAGE",
            "SORT",
            "SORT=DISPLAY",
            "COMPRESS=DEFLATE",
            "THREAD=ORDEREDSUBJECT",
            "THREAD=REFERENCES",
        ]);
        let mut s = caps.join(" ");
        s.push_str(&format!(
            " APPENDLIMIT={}",
            self.ctx.config.max_message_bytes
        ));
        s
    }

    /// Decodes a mailbox name as the client sent it.
    pub(crate) fn mailbox_name(&self, raw: &[u8]) -> Result<MailboxName, Done> {
        let text = if self.utf8 {
            match std::str::from_utf8(raw) {
                Ok(s) => s.to_string(),
                Err(_) => return Err(Done::bad("Mailbox name is not valid UTF-8")),
            }
        } else {
            match crate::mutf7::decode(raw) {
                Some(s) => s,
                None => {
                    // IMAP4rev1 clients may also send plain UTF-8 (RFC 6855 §3 recommends
                    // accepting it); anything else is refused.
                    match std::str::from_utf8(raw) {
                        Ok(s) if !raw.contains(&b'&') => s.to_string(),
                        _ => return Err(Done::bad("Mailbox name is not valid modified UTF-7")),
                    }
                }
            }
        };
        MailboxName::new(&text)
            .map_err(|e| Done::no(&format!("[CANNOT] Invalid mailbox name: {e}")))
    }

    pub(crate) fn session(&self) -> Result<&Unlocked, Done> {
        self.user.as_ref().ok_or_else(|| Done::bad("Log in first"))
    }

    /// Runs the session to its end.
    pub async fn run(mut self, io: Io) {
        let mut reader: Reader = BufReader::with_capacity(16 * 1024, io);
        let greeting = format!(
            "* OK [CAPABILITY {}] Coffer IMAP ready\r\n",
            self.capabilities()
        );
        if write_now(&mut reader, greeting.as_bytes()).await.is_err() {
            return;
        }
        let limits = self.ctx.config.frame_limits();
        loop {
            let timeout = if self.user.is_some() {
                self.ctx.config.idle_timeout
            } else {
                self.ctx.config.login_timeout
            };
            let frame =
                match tokio::time::timeout(timeout, read_command(&mut reader, &limits)).await {
                    Err(_) => {
                        let _ = write_now(&mut reader, b"* BYE Autologout; idle for too long\r\n")
                            .await;
                        break;
                    }
                    Ok(Err(_)) | Ok(Ok(Frame::Eof)) => break,
                    Ok(Ok(f)) => f,
                };
            let (command_bytes, literals) = match frame {
                Frame::Command(b, l) => (b, l),
                Frame::LineTooLong => {
                    let _ = write_now(&mut reader, b"* BYE Line too long\r\n").await;
                    break;
                }
                Frame::LiteralTooBig { tag, limit } => {
                    let msg = format!(
                        "{tag} NO [TOOBIG] Literal is larger than the limit of {limit} bytes\r\n"
                    );
                    if write_now(&mut reader, msg.as_bytes()).await.is_err() {
                        break;
                    }
                    continue;
                }
                Frame::NonSyncLiteralTooBig { tag } => {
                    let msg = format!(
                        "{tag} BAD [TOOBIG] Literal too large\r\n* BYE Literal too large\r\n"
                    );
                    let _ = write_now(&mut reader, msg.as_bytes()).await;
                    break;
                }
                Frame::Eof => break,
            };
            if command_bytes.is_empty() {
                continue;
            }
            let command = match parse_framed(&command_bytes, literals) {
                Ok(c) => c,
                Err(e) => {
                    self.errors += 1;
                    let msg = match e.tag {
                        Some(tag) => format!("{tag} BAD {}\r\n", e.message),
                        None => format!("* BAD {}\r\n", e.message),
                    };
                    if write_now(&mut reader, msg.as_bytes()).await.is_err() {
                        break;
                    }
                    if self.errors >= self.ctx.config.max_errors {
                        let _ = write_now(&mut reader, b"* BYE Too many errors\r\n").await;
                        break;
                    }
                    continue;
                }
            };
            drop(command_bytes);
            let tag = command.tag.clone();
            let mut out = Out {
                r: &mut reader,
                buf: Vec::new(),
            };
            let done = self.dispatch(command, &mut out).await;
            if let Done::Tagged(text) = &done {
                if text.starts_with("BAD") {
                    self.errors += 1;
                }
                // The untagged updates and the tagged answer go out with the command's own
                // responses, in one write.
                let tail = self.updates_after_command().await;
                out.bytes(&tail);
                out.bytes(format!("{tag} {text}\r\n").as_bytes());
            }
            if out.flush().await.is_err() {
                break;
            }
            match done {
                Done::Tagged(_) => {
                    if self.errors >= self.ctx.config.max_errors {
                        let _ = write_now(&mut reader, b"* BYE Too many errors\r\n").await;
                        break;
                    }
                }
                Done::Bye(text) => {
                    let _ = write_now(&mut reader, format!("* BYE {text}\r\n").as_bytes()).await;
                    break;
                }
                Done::Abort => break,
                Done::Logout => {
                    let _ = write_now(
                        &mut reader,
                        format!("* BYE Logging out\r\n{tag} OK LOGOUT completed\r\n").as_bytes(),
                    )
                    .await;
                    break;
                }
                Done::StartTls => {
                    if write_now(
                        &mut reader,
                        format!("{tag} OK Begin TLS negotiation now\r\n").as_bytes(),
                    )
                    .await
                    .is_err()
                    {
                        break;
                    }
                    // Anything the client pipelined after STARTTLS is discarded (RFC 9051 §6.2.1).
                    let io = reader.into_inner();
                    let Io::Plain(tcp) = io else { break };
                    let Some(acceptor) = self.ctx.tls.clone() else {
                        break;
                    };
                    match tokio::time::timeout(Duration::from_secs(30), acceptor.accept(tcp)).await
                    {
                        Ok(Ok(tls)) => {
                            self.tls = true;
                            reader = BufReader::with_capacity(16 * 1024, Io::Tls(Box::new(tls)));
                        }
                        _ => return self.end(),
                    }
                }
                Done::Compress => {
                    if write_now(
                        &mut reader,
                        format!("{tag} OK DEFLATE active\r\n").as_bytes(),
                    )
                    .await
                    .is_err()
                    {
                        break;
                    }
                    let io = reader.into_inner();
                    reader = BufReader::with_capacity(
                        16 * 1024,
                        Io::Deflate(Box::new(crate::connection::Deflate::new(io))),
                    );
                    self.compressed = true;
                }
                Done::Idle => match self.idle(&mut reader, &tag).await {
                    Ok(true) => {}
                    _ => break,
                },
            }
        }
        self.end();
    }

    fn end(&mut self) {
        if let Some(u) = self.user.take() {
            self.ctx.user_disconnect(u.user_id());
        }
    }
}

impl Drop for Session {
    // Also on a panic or a cancelled task: the per-user count must come back down.
    fn drop(&mut self) {
        self.end();
    }
}

impl Session {
    async fn dispatch(&mut self, command: Command, out: &mut Out<'_>) -> Done {
        use CommandBody as C;
        let authenticated = self.user.is_some();
        let selected = self.selected.is_some();
        self.expunge_ok = !matches!(
            command.body,
            C::Fetch { uid: false, .. }
                | C::Store { uid: false, .. }
                | C::Search { uid: false, .. }
        );
        self.poll_now = matches!(command.body, C::Noop | C::Check | C::Idle);
        match &command.body {
            C::Capability | C::Noop | C::Logout | C::Id(_) => {}
            C::StartTls | C::Login { .. } | C::Authenticate { .. } => {
                if authenticated {
                    return Done::bad("Already authenticated");
                }
            }
            C::Check
            | C::Close
            | C::Unselect
            | C::Expunge { .. }
            | C::Search { .. }
            | C::Sort { .. }
            | C::Thread { .. }
            | C::Fetch { .. }
            | C::Store { .. }
            | C::Copy { .. }
            | C::Move { .. } => {
                if !selected {
                    return Done::bad("No mailbox selected");
                }
            }
            _ => {
                if !authenticated {
                    return Done::bad("Log in first");
                }
            }
        }
        // A keyring locked ("lock now"), or an account reset or deleted by another process
        // (the CLI, another node), ends the session: its keys no longer match the account.
        // NOOP, CHECK and IDLE, the commands clients poll with, always read the store.
        if let Some(done) = self.account_still_valid(self.poll_now).await {
            return done;
        }
        match command.body {
            C::Capability => {
                out.line(&format!("* CAPABILITY {}", self.capabilities()));
                Done::ok("CAPABILITY completed")
            }
            C::Noop => Done::ok("NOOP completed"),
            C::Check => Done::ok("CHECK completed"),
            C::Logout => Done::Logout,
            C::Id(_) => {
                out.line(&format!(
                    "* ID (\"name\" \"Coffer\" \"version\" \"{}\")",
                    env!("CARGO_PKG_VERSION")
                ));
                Done::ok("ID completed")
            }
            C::StartTls => {
                if self.tls {
                    Done::bad("TLS is already active")
                } else if self.ctx.tls.is_none() {
                    Done::no("TLS is not configured")
                } else {
                    Done::StartTls
                }
            }
            C::Login { user, password } => self.login(&user, &password).await,
            C::Authenticate { mechanism, initial } => {
                self.authenticate(&mechanism, initial, out).await
            }
            C::Enable(caps) => self.enable(&caps, out),
            C::Namespace => {
                out.line("* NAMESPACE ((\"\" \"/\")) NIL NIL");
                Done::ok("NAMESPACE completed")
            }
            C::Idle => Done::Idle,
            C::Select {
                mailbox,
                read_only,
                condstore,
                qresync,
            } => {
                self.select(&mailbox, read_only, condstore, qresync, out)
                    .await
            }
            C::Create {
                mailbox,
                special_use,
            } => self.create(&mailbox, &special_use).await,
            C::Delete(mailbox) => self.delete(&mailbox, out).await,
            C::Rename { from, to } => self.rename(&from, &to).await,
            C::Subscribe(mailbox) => self.subscribe(&mailbox, true).await,
            C::Unsubscribe(mailbox) => self.subscribe(&mailbox, false).await,
            C::List {
                reference,
                patterns,
                options,
            } => self.list(&reference, &patterns, &options, out).await,
            C::Lsub { reference, pattern } => self.lsub(&reference, &pattern, out).await,
            C::Status { mailbox, items } => self.status(&mailbox, &items, out).await,
            C::Append { mailbox, messages } => self.append(&mailbox, messages).await,
            C::Close => self.close(true).await,
            C::Unselect => self.close(false).await,
            C::Expunge { uids } => self.expunge(uids.as_ref(), out).await,
            C::Search {
                uid,
                ret,
                charset,
                key,
            } => self.search(uid, ret, charset, key, &command.tag, out).await,
            C::Fetch {
                uid,
                set,
                items,
                changed_since,
                vanished,
            } => {
                self.fetch(uid, &set, &items, changed_since, vanished, out)
                    .await
            }
            C::Store {
                uid,
                set,
                unchanged_since,
                mode,
                silent,
                flags,
            } => {
                self.store(uid, &set, unchanged_since, mode, silent, &flags, out)
                    .await
            }
            C::Copy { uid, set, mailbox } => {
                self.copy_or_move(uid, &set, &mailbox, false, out).await
            }
            C::Move { uid, set, mailbox } => {
                self.copy_or_move(uid, &set, &mailbox, true, out).await
            }
            C::GetQuota(root) => self.get_quota(&root, out).await,
            C::GetQuotaRoot(mailbox) => self.get_quota_root(&mailbox, out).await,
            C::SetQuota => Done::no("[NOPERM] Quotas are set by the operator"),
            C::Sort {
                uid,
                criteria,
                charset,
                key,
                ..
            } => self.sort(uid, &criteria, &charset, &key, out).await,
            C::Thread {
                uid,
                algorithm,
                charset,
                key,
            } => self.thread(uid, algorithm, &charset, &key, out).await,
            C::Compress(alg) => {
                if alg != "DEFLATE" {
                    Done::bad("Unknown compression algorithm")
                } else if self.compressed {
                    Done::no("[COMPRESSIONACTIVE] Compression is already active")
                } else {
                    Done::Compress
                }
            }
        }
    }

    fn enable(&mut self, caps: &[String], out: &mut Out<'_>) -> Done {
        let mut enabled = Vec::new();
        for c in caps {
            match c.as_str() {
                "CONDSTORE" => {
                    self.condstore = true;
                    enabled.push("CONDSTORE");
                }
                "QRESYNC" => {
                    self.condstore = true;
                    self.qresync = true;
                    enabled.push("QRESYNC");
                }
                "UTF8=ACCEPT" => {
                    self.utf8 = true;
                    enabled.push("UTF8=ACCEPT");
                }
                "IMAP4REV2" => {
                    self.rev2 = true;
                    self.utf8 = true;
                    enabled.push("IMAP4rev2");
                }
                _ => {}
            }
        }
        out.line(format!("* ENABLED {}", enabled.join(" ")).trim_end());
        Done::ok("ENABLE completed")
    }

    async fn login(&mut self, user: &[u8], password: &[u8]) -> Done {
        if !self.login_allowed() {
            return Done::no("[PRIVACYREQUIRED] Use STARTTLS or the TLS port before logging in");
        }
        let user = String::from_utf8_lossy(user).into_owned();
        let password = zeroize::Zeroizing::new(String::from_utf8_lossy(password).into_owned());
        self.finish_login(&user, &password).await
    }

    async fn authenticate(
        &mut self,
        mechanism: &str,
        initial: Option<Vec<u8>>,
        out: &mut Out<'_>,
    ) -> Done {
        if !self.login_allowed() {
            return Done::no("[PRIVACYREQUIRED] Use STARTTLS or the TLS port before logging in");
        }
        if mechanism != "PLAIN" {
            return Done::no("[CANNOT] Unsupported authentication mechanism");
        }
        let response = match initial {
            Some(r) => r,
            None => {
                out.line("+ ");
                if out.flush().await.is_err() {
                    return Done::Bye("Connection error".into());
                }
                let mut line = Vec::new();
                match read_line(out.r, 8192, &mut line).await {
                    Ok(Some(Ok(()))) => line,
                    _ => return Done::Bye("Connection error".into()),
                }
            }
        };
        if response == b"*" {
            return Done::bad("Authentication cancelled");
        }
        use base64::Engine;
        let decoded = match base64::engine::general_purpose::STANDARD.decode(&response) {
            Ok(d) => zeroize::Zeroizing::new(d),
            Err(_) => return Done::bad("Invalid base64 in the SASL response"),
        };
        // PLAIN (RFC 4616): authzid NUL authcid NUL passwd.
        let parts: Vec<&[u8]> = decoded.split(|c| *c == 0).collect();
        if parts.len() != 3 {
            return Done::bad("Malformed SASL PLAIN response");
        }
        if !parts[0].is_empty() && parts[0] != parts[1] {
            return Done::no("[AUTHORIZATIONFAILED] Acting as another user is not allowed");
        }
        let user = String::from_utf8_lossy(parts[1]).into_owned();
        let password = zeroize::Zeroizing::new(String::from_utf8_lossy(parts[2]).into_owned());
        self.finish_login(&user, &password).await
    }

    async fn finish_login(&mut self, user: &str, password: &str) -> Done {
        let vault = self.ctx.mail.vault().clone();
        let user_id = vault.user_id(user).ok();
        let delay = vault.throttle().delay(user_id.as_ref(), self.peer.ip());
        if !delay.is_zero() {
            tokio::time::sleep(delay).await;
        }
        match vault.login(user, password, Purpose::Mail).await {
            Ok(session) => {
                let uid = *session.user_id();
                vault.throttle().succeeded(&uid, self.peer.ip());
                if !self.ctx.user_connect(&uid) {
                    return Done::no("[LIMIT] Too many connections for this user");
                }
                self.changes = Some(self.ctx.mail.changes().subscribe(&uid));
                session.describe("IMAP", self.peer.ip());
                self.user = Some(session);
                tracing::info!(user = %short(&uid), peer = %self.peer.ip(), "login");
                Done::Tagged(format!("OK [CAPABILITY {}] Logged in", self.capabilities()))
            }
            Err(
                VaultError::AuthFailed
                | VaultError::InvalidUsername(_)
                | VaultError::InvalidPassword(_)
                | VaultError::KindNotAccepted(_),
            ) => {
                vault.throttle().failed(user_id.as_ref(), self.peer.ip());
                tracing::info!(peer = %self.peer.ip(), "login failed");
                Done::no("[AUTHENTICATIONFAILED] Authentication failed")
            }
            Err(e) => {
                tracing::warn!(error = %e, "login error");
                Done::no("[UNAVAILABLE] Login is temporarily unavailable")
            }
        }
    }

    /// Whether the store must be read again to see changes made outside this process, for
    /// a check last made at `checked`. A change made in this process reaches the session
    /// at once (a lock wipes its keys, a mailbox write is announced on `changes`); one made
    /// by another process shows as a new external epoch within the server's poll interval.
    /// Past that interval the store is read anyway, in case the watcher could not read it.
    fn stale(&self, checked: Option<(u64, Instant)>) -> bool {
        match checked {
            None => true,
            Some((epoch, at)) => {
                epoch != self.ctx.mail.changes().external_epoch()
                    || at.elapsed() >= self.ctx.config.poll_interval
            }
        }
    }

    /// `None` when the logged-in keyring still matches the account; otherwise the answer
    /// that ends the command (BYE, or NO when the store cannot be read). `force` reads the
    /// store even when nothing announced a change.
    async fn account_still_valid(&mut self, force: bool) -> Option<Done> {
        let u = self.user.as_ref()?;
        if u.is_locked() {
            return Some(Done::Bye("Mailbox locked; log in again".into()));
        }
        if !force && !self.stale(self.account_checked) {
            return None;
        }
        // Taken before the reads: a change announced while they run is read next time.
        let epoch = self.ctx.mail.changes().external_epoch();
        let at = Instant::now();
        match self.ctx.mail.vault().locked_elsewhere(u).await {
            Ok(true) => return Some(Done::Bye("Mailbox locked; log in again".into())),
            Ok(false) => {}
            Err(_) => return Some(Done::no("[UNAVAILABLE] Storage is unavailable, try again")),
        }
        let current = u.with(|k| k.current_generation()).ok();
        match self.ctx.mail.vault().store().get_account(u.user_id()).await {
            Ok(Some(a)) if Some(a.generation) == current => {}
            Ok(_) => {
                self.ctx.mail.vault().lock(u.user_id());
                return Some(Done::Bye("Account changed; log in again".into()));
            }
            Err(_) => return Some(Done::no("[UNAVAILABLE] Storage is unavailable, try again")),
        }
        self.account_checked = Some((epoch, at));
        None
    }

    /// Untagged updates allowed after a command completes (RFC 9051 §7.5.1), for the
    /// selected mailbox.
    async fn updates_after_command(&mut self) -> Vec<u8> {
        let mut buf = Vec::new();
        if self.selected.is_some() {
            let _ = self
                .sync_selected(self.expunge_ok, self.poll_now, &mut buf)
                .await;
        }
        buf
    }

    /// Brings the selected view up to date and writes EXISTS / EXPUNGE (or VANISHED) /
    /// FETCH FLAGS lines into `buf`. Expunges are held back while `allow_expunge` is false
    /// (FETCH, STORE, SEARCH by sequence number).
    pub(crate) async fn sync_selected(
        &mut self,
        allow_expunge: bool,
        force: bool,
        buf: &mut Vec<u8>,
    ) -> Result<(), MailError> {
        let Some(selected) = self.selected.as_ref().map(|s| s.mailbox.id) else {
            return Ok(());
        };
        // Drain notifications: was the selected mailbox changed in this process?
        let mut announced = force;
        match self.changes.as_mut() {
            None => announced = true,
            Some(rx) => loop {
                match rx.try_recv() {
                    Ok(id) => announced |= id == selected,
                    // Missed some: read the counters.
                    Err(broadcast::error::TryRecvError::Lagged(_)) => announced = true,
                    Err(broadcast::error::TryRecvError::Empty) => break,
                    Err(_) => {
                        announced = true;
                        break;
                    }
                }
            },
        }
        let pending = self
            .selected
            .as_ref()
            .is_some_and(|s| !s.pending_expunge.is_empty());
        if !announced && !pending && !self.stale(self.mailbox_checked) {
            return Ok(());
        }
        let epoch = self.ctx.mail.changes().external_epoch();
        let at = Instant::now();
        let Some(session) = self.user.as_ref() else {
            return Ok(());
        };
        let Some(sel) = self.selected.as_mut() else {
            return Ok(());
        };
        let store = self.ctx.mail.vault().store().clone();
        let row = match store.get_mailbox(session.user_id(), sel.mailbox.id).await? {
            Some(r) => r,
            None => {
                // Deleted by another session: RFC 9051 §7.1 BYE is too harsh; Dovecot
                // answers with BYE as well. End the selection instead.
                buf.extend_from_slice(b"* BYE Selected mailbox was deleted\r\n");
                self.selected = None;
                return Ok(());
            }
        };
        if row.highest_modseq == sel.highest_modseq
            && row.uid_next == sel.uid_next
            && sel.pending_expunge.is_empty()
        {
            self.mailbox_checked = Some((epoch, at));
            return Ok(());
        }
        let current = self
            .ctx
            .mail
            .flags_view_at(session, sel.mailbox.id, row.uid_next, row.highest_modseq)
            .await?;
        apply_changes(
            sel,
            &current,
            allow_expunge,
            self.condstore,
            self.qresync,
            buf,
        );
        sel.highest_modseq = row.highest_modseq;
        sel.uid_next = row.uid_next;
        self.mailbox_checked = Some((epoch, at));
        Ok(())
    }

    /// IDLE (RFC 2177 / RFC 9051 §6.3.13): returns Ok(true) to continue the session.
    async fn idle(&mut self, reader: &mut Reader, tag: &str) -> std::io::Result<bool> {
        write_now(reader, b"+ idling\r\n").await?;
        let deadline = tokio::time::Instant::now() + self.ctx.config.idle_timeout;
        let mut line = Vec::new();
        let mut external = self.ctx.mail.changes().subscribe_external();
        loop {
            let mut buf = Vec::new();
            let mut check_mailbox = false;
            let changed = async {
                match self.changes.as_mut() {
                    Some(rx) => {
                        let _ = rx.recv().await;
                    }
                    None => std::future::pending::<()>().await,
                }
            };
            tokio::select! {
                r = read_line(reader, 1024, &mut line) => {
                    match r? {
                        Some(Ok(())) => {}
                        _ => return Ok(false),
                    }
                    let done = line.eq_ignore_ascii_case(b"DONE");
                    line.clear();
                    let mut tail = Vec::new();
                    if self.selected.is_some() {
                        let _ = self.sync_selected(true, true, &mut tail).await;
                    }
                    if done {
                        tail.extend_from_slice(format!("{tag} OK IDLE terminated\r\n").as_bytes());
                    } else {
                        tail.extend_from_slice(format!("{tag} BAD Expected DONE\r\n").as_bytes());
                    }
                    write_now(reader, &tail).await?;
                    return Ok(true);
                }
                _ = changed => check_mailbox = true,
                _ = external.recv() => {
                    check_mailbox = true;
                    let locked = match &self.user {
                        Some(u) => matches!(self.ctx.mail.vault().locked_elsewhere(u).await, Ok(true)),
                        None => false,
                    };
                    if locked {
                        write_now(reader, b"* BYE Mailbox locked; log in again\r\n").await?;
                        return Ok(false);
                    }
                }
                // "Lock now" wipes keys in memory only; notice it within a second.
                _ = tokio::time::sleep(Duration::from_secs(1)) => {}
                _ = tokio::time::sleep_until(deadline) => {
                    write_now(reader, b"* BYE Autologout; idle for too long\r\n").await?;
                    return Ok(false);
                }
            }
            if let Some(u) = &self.user {
                if u.is_locked() {
                    write_now(reader, b"* BYE Mailbox locked; log in again\r\n").await?;
                    return Ok(false);
                }
            }
            if check_mailbox && self.selected.is_some() {
                let _ = self.sync_selected(true, true, &mut buf).await;
            }
            if !buf.is_empty() {
                write_now(reader, &buf).await?;
            }
        }
    }
}

fn short(u: &coffer_types::UserId) -> String {
    u.to_hex()[..12].to_string()
}

/// A client that stops reading cannot hold its session (and the user's keys) forever.
const WRITE_TIMEOUT: Duration = Duration::from_secs(120);

pub(crate) async fn write_now(r: &mut Reader, bytes: &[u8]) -> std::io::Result<()> {
    let w = r.get_mut();
    let write = async {
        w.write_all(bytes).await?;
        w.flush().await
    };
    tokio::time::timeout(WRITE_TIMEOUT, write)
        .await
        .map_err(|_| std::io::Error::new(std::io::ErrorKind::TimedOut, "client stopped reading"))?
}

pub(crate) fn flags_text(flags: &[Flag]) -> String {
    let mut s = String::from("(");
    for (i, f) in flags.iter().enumerate() {
        if i > 0 {
            s.push(' ');
        }
        s.push_str(f.as_str());
    }
    s.push(')');
    s
}

/// Applies the mailbox's current state to the view, writing the untagged responses.
fn apply_changes(
    sel: &mut Selected,
    current: &[FlagsEntry],
    allow_expunge: bool,
    condstore: bool,
    qresync: bool,
    buf: &mut Vec<u8>,
) {
    use std::collections::HashMap;
    let now: HashMap<u32, &FlagsEntry> = current.iter().map(|e| (e.uid.get(), e)).collect();
    // Expunges.
    let gone: Vec<u32> = sel
        .view
        .iter()
        .filter(|m| !now.contains_key(&m.uid.get()))
        .map(|m| m.uid.get())
        .collect();
    if allow_expunge && !gone.is_empty() {
        buf.extend(sel.remove_uids(&gone, qresync));
        sel.pending_expunge.clear();
    } else if !gone.is_empty() {
        sel.pending_expunge = gone;
    }
    // Flag changes. The view may be shared with the keyring's cache: it is copied
    // (`Arc::make_mut`) only when something in it changes.
    let changed: Vec<(usize, &FlagsEntry)> = sel
        .view
        .iter()
        .enumerate()
        .filter_map(|(i, m)| {
            now.get(&m.uid.get())
                .filter(|e| e.modseq != m.modseq)
                .map(|e| (i, *e))
        })
        .collect();
    if !changed.is_empty() {
        let view = Arc::make_mut(&mut sel.view);
        for (i, e) in changed {
            let m = &mut view[i];
            m.modseq = e.modseq;
            if e.flags != m.flags {
                m.flags = e.flags.clone();
                let mut line = format!("* {} FETCH (FLAGS {}", i + 1, flags_text(&m.flags));
                if qresync {
                    line.push_str(&format!(" UID {}", m.uid));
                }
                if condstore {
                    line.push_str(&format!(" MODSEQ ({})", m.modseq.get()));
                }
                line.push_str(")\r\n");
                buf.extend_from_slice(line.as_bytes());
            }
        }
    }
    // New messages.
    let max = sel.max_uid();
    let mut added = false;
    for e in current.iter().filter(|e| e.uid.get() > max) {
        Arc::make_mut(&mut sel.view).push(e.clone());
        added = true;
    }
    if added {
        buf.extend_from_slice(format!("* {} EXISTS\r\n", sel.view.len()).as_bytes());
    }
}

/// A compact UID set text ("1:3,7").
pub(crate) fn uid_set_text(uids: &[u32]) -> String {
    let mut v = uids.to_vec();
    v.sort_unstable();
    v.dedup();
    let mut parts: Vec<String> = Vec::new();
    let mut i = 0;
    while i < v.len() {
        let start = v[i];
        let mut end = start;
        while i + 1 < v.len() && v[i + 1] == end + 1 {
            i += 1;
            end = v[i];
        }
        parts.push(if start == end {
            start.to_string()
        } else {
            format!("{start}:{end}")
        });
        i += 1;
    }
    parts.join(",")
}

#[cfg(test)]
mod tests {
    use super::*;
    use coffer_types::{Generation, MailboxId, MailboxName, ModSeq, Uid, UidValidity};

    fn selected(uids: &[u32]) -> Selected {
        let view: Vec<ViewMsg> = uids
            .iter()
            .map(|&u| ViewMsg {
                uid: Uid::new(u).unwrap(),
                modseq: ModSeq::new(u as u64).unwrap(),
                flags: Vec::new().into(),
            })
            .collect();
        Selected {
            mailbox: Mailbox {
                id: MailboxId(1),
                name: MailboxName::new("INBOX").unwrap(),
                special_use: None,
                subscribed: true,
                uid_validity: UidValidity::new(1).unwrap(),
                uid_next: 100,
                highest_modseq: 100,
                generation: Generation(1),
            },
            read_only: false,
            view: Arc::new(view),
            highest_modseq: 100,
            uid_next: 100,
            pending_expunge: Vec::new(),
        }
    }

    fn uids(sel: &Selected) -> Vec<u32> {
        sel.view.iter().map(|m| m.uid.get()).collect()
    }

    #[test]
    fn removing_uids_announces_highest_sequence_first_and_leaves_a_shared_view_alone() {
        let mut sel = selected(&[3, 5, 8, 13, 21, 34]);
        let shared = sel.view.clone();
        let said = sel.remove_uids(&[21, 5, 99], false);
        assert_eq!(
            String::from_utf8(said).unwrap(),
            "* 5 EXPUNGE\r\n* 2 EXPUNGE\r\n"
        );
        assert_eq!(uids(&sel), [3, 8, 13, 34]);
        assert_eq!(
            shared.len(),
            6,
            "the cached view another session shares is unchanged"
        );

        let said = sel.remove_uids(&[13, 8], true);
        assert_eq!(String::from_utf8(said).unwrap(), "* VANISHED 8,13\r\n");
        assert_eq!(uids(&sel), [3, 34]);

        assert!(
            sel.remove_uids(&[77], true).is_empty(),
            "nothing in the view"
        );
        assert_eq!(uids(&sel), [3, 34]);
    }
}
