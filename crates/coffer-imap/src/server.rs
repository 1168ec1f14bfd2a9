//! Listeners, TLS, per-address and per-user connection limits, the login throttle, and
//! the accept loop that starts one session task per connection.

use crate::connection::{FrameLimits, Io};
use crate::session::Session;
use coffer_mail::Mail;
use coffer_types::UserId;
use std::collections::HashMap;
use std::net::{IpAddr, SocketAddr};
use std::path::Path;
use std::sync::{Arc, Mutex};
use std::time::Duration;
use tokio::net::TcpListener;
use tokio_rustls::TlsAcceptor;

/// Settings of the IMAP server (from `[imap]` and `[limits]` of coffer.toml).
#[derive(Clone, Debug)]
pub struct ImapConfig {
    /// Accept LOGIN/AUTHENTICATE before TLS from loopback addresses.
    pub allow_plaintext_login_on_loopback: bool,
    /// Longest command line, in bytes (Dovecot's imap_max_line_length is 64 KiB).
    pub max_line: usize,
    /// APPENDLIMIT (RFC 7889): the largest message accepted.
    pub max_message_bytes: u64,
    /// Per-user storage quota in bytes; 0 = none (RFC 9208 STORAGE).
    pub quota_bytes: u64,
    /// Errors (BAD answers) allowed before the server says BYE.
    pub max_errors: u32,
    /// Inactivity before autologout once authenticated: RFC 9051 §5.4 asks for at least
    /// 30 minutes; IDLE clients re-issue IDLE every 29 minutes.
    pub idle_timeout: Duration,
    /// Inactivity before a connection that has not logged in is closed.
    pub login_timeout: Duration,
    pub max_connections_per_ip: usize,
    pub max_connections_per_user: usize,
    /// How often the server checks the store for changes made by other processes (the CLI,
    /// `coffer deliver`); IDLE sessions hear of them at the next check.
    pub poll_interval: Duration,
}

impl Default for ImapConfig {
    fn default() -> Self {
        ImapConfig {
            allow_plaintext_login_on_loopback: true,
            max_line: 64 * 1024,
            max_message_bytes: coffer_mail::DEFAULT_MAX_MESSAGE_BYTES,
            quota_bytes: 0,
            max_errors: 20,
            idle_timeout: Duration::from_secs(31 * 60),
            login_timeout: Duration::from_secs(180),
            max_connections_per_ip: 100,
            max_connections_per_user: 50,
            poll_interval: Duration::from_millis(500),
        }
    }
}

impl ImapConfig {
    pub fn frame_limits(&self) -> FrameLimits {
        FrameLimits {
            max_line: self.max_line,
            max_append_literal: self.max_message_bytes,
            max_other_literal: self.max_line as u64,
            max_command: self.max_message_bytes.saturating_mul(2).max(1 << 20),
        }
    }
}

/// Open connections per address and per user.
#[derive(Default)]
pub struct Counts {
    per_ip: HashMap<IpAddr, usize>,
    per_user: HashMap<UserId, usize>,
}

/// Everything sessions share.
pub struct Ctx {
    pub mail: Mail,
    pub config: ImapConfig,
    pub tls: Option<TlsAcceptor>,
    pub counts: Mutex<Counts>,
}

impl Ctx {
    pub fn new(mail: Mail, config: ImapConfig, tls: Option<TlsAcceptor>) -> Arc<Ctx> {
        Arc::new(Ctx {
            mail,
            config,
            tls,
            counts: Mutex::new(Counts::default()),
        })
    }

    fn counts(&self) -> std::sync::MutexGuard<'_, Counts> {
        self.counts.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Registers a connection from `ip`; false if the address has too many.
    pub fn connect(&self, ip: IpAddr) -> bool {
        let mut c = self.counts();
        let n = c.per_ip.entry(ip).or_insert(0);
        if *n >= self.config.max_connections_per_ip {
            return false;
        }
        *n += 1;
        true
    }

    pub fn disconnect(&self, ip: IpAddr) {
        let mut c = self.counts();
        if let Some(n) = c.per_ip.get_mut(&ip) {
            *n = n.saturating_sub(1);
            if *n == 0 {
                c.per_ip.remove(&ip);
            }
        }
    }

    /// Registers an authenticated session of `user`; false if the user has too many.
    pub fn user_connect(&self, user: &UserId) -> bool {
        let mut c = self.counts();
        let n = c.per_user.entry(*user).or_insert(0);
        if *n >= self.config.max_connections_per_user {
            return false;
        }
        *n += 1;
        true
    }

    pub fn user_disconnect(&self, user: &UserId) {
        let mut c = self.counts();
        if let Some(n) = c.per_user.get_mut(user) {
            *n = n.saturating_sub(1);
            if *n == 0 {
                c.per_user.remove(user);
            }
        }
    }
}

/// Loads a PEM certificate chain and private key into a TLS acceptor.
pub fn tls_acceptor(cert: &Path, key: &Path) -> Result<TlsAcceptor, String> {
    use rustls_pki_types::pem::PemObject;
    use rustls_pki_types::{CertificateDer, PrivateKeyDer};
    let certs: Vec<CertificateDer<'static>> = CertificateDer::pem_file_iter(cert)
        .map_err(|e| format!("reading certificate {}: {e}", cert.display()))?
        .collect::<Result<_, _>>()
        .map_err(|e| format!("parsing certificate {}: {e}", cert.display()))?;
    if certs.is_empty() {
        return Err(format!("no certificate in {}", cert.display()));
    }
    let key = PrivateKeyDer::from_pem_file(key)
        .map_err(|e| format!("reading private key {}: {e}", key.display()))?;
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let config = rustls::ServerConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .map_err(|e| format!("TLS setup: {e}"))?
        .with_no_client_auth()
        .with_single_cert(certs, key)
        .map_err(|e| format!("TLS certificate/key: {e}"))?;
    Ok(TlsAcceptor::from(Arc::new(config)))
}

/// A bound listener: implicit TLS (IMAPS) or plain with STARTTLS.
pub struct Listener {
    pub socket: TcpListener,
    pub implicit_tls: bool,
}

/// Accepts connections until `shutdown` fires.
pub async fn serve(
    ctx: Arc<Ctx>,
    listeners: Vec<Listener>,
    mut shutdown: tokio::sync::watch::Receiver<bool>,
) {
    let mut tasks = Vec::new();
    // One watcher for the whole server, not one poll per idle session.
    {
        let ctx = ctx.clone();
        tasks.push(tokio::spawn(async move {
            let store = ctx.mail.vault().store().clone();
            let mut last = store.data_version().await.ok();
            let mut tick = tokio::time::interval(ctx.config.poll_interval);
            loop {
                tick.tick().await;
                let now = store.data_version().await.ok();
                if now.is_some() && now != last {
                    last = now;
                    ctx.mail.changes().notify_external();
                }
            }
        }));
    }
    for l in listeners {
        let ctx = ctx.clone();
        let mut shutdown = shutdown.clone();
        tasks.push(tokio::spawn(async move {
            loop {
                tokio::select! {
                    accepted = l.socket.accept() => {
                        let Ok((stream, peer)) = accepted else { continue };
                        let ctx = ctx.clone();
                        tokio::spawn(handle(ctx, stream, peer, l.implicit_tls));
                    }
                    _ = shutdown.changed() => break,
                }
            }
        }));
    }
    let _ = shutdown.changed().await;
    for t in tasks {
        t.abort();
    }
}

/// Gives the per-address connection slot back when the connection ends, however it ends.
struct AddrSlot {
    ctx: Arc<Ctx>,
    ip: IpAddr,
}

impl Drop for AddrSlot {
    fn drop(&mut self) {
        self.ctx.disconnect(self.ip);
    }
}

async fn handle(
    ctx: Arc<Ctx>,
    stream: tokio::net::TcpStream,
    peer: SocketAddr,
    implicit_tls: bool,
) {
    let _ = stream.set_nodelay(true);
    if !ctx.connect(peer.ip()) {
        use tokio::io::AsyncWriteExt;
        let mut stream = stream;
        let _ = stream
            .write_all(b"* BYE Too many connections from your address\r\n")
            .await;
        return;
    }
    let _slot = AddrSlot {
        ctx: ctx.clone(),
        ip: peer.ip(),
    };
    let io = if implicit_tls {
        let Some(acceptor) = ctx.tls.clone() else {
            return;
        };
        match tokio::time::timeout(Duration::from_secs(30), acceptor.accept(stream)).await {
            Ok(Ok(tls)) => Io::Tls(Box::new(tls)),
            _ => return,
        }
    } else {
        Io::Plain(stream)
    };
    Session::new(ctx.clone(), peer, implicit_tls).run(io).await;
}
