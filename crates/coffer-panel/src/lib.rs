//! The user control panel of Coffer (issue 5): an HTTPS site, server-rendered HTML with a
//! small stylesheet and no JavaScript, where each user signs in with their account
//! password and manages their own security: mode (high or low), password, app passwords,
//! recovery code, "lock my mailbox now", and the forgot-password page.
//!
//! The panel holds no key of its own: a signed-in panel session holds an
//! [`coffer_vault::Unlocked`], exactly like an IMAP session, so it counts as a session of
//! the user and its end (sign-out, expiry, lock) lets the keyring be wiped.
#![forbid(unsafe_code)]

mod html;
mod routes;
mod session;

use coffer_mail::Mail;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

pub use session::SESSION_COOKIE;

/// Who may create an account from the panel.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default)]
pub enum Registration {
    /// Only the operator creates users (`coffer user add`).
    #[default]
    Closed,
    /// Anyone who can reach the panel may sign up.
    Open,
    /// Sign-up needs an invitation code made with `coffer invite create` (used once).
    Invite,
}

/// Settings of the panel (from `[panel]` of coffer.toml).
#[derive(Clone, Debug)]
pub struct PanelConfig {
    /// A session not used for this long ends (its keyring reference is dropped).
    pub session_idle: Duration,
    /// A session ends this long after sign-in however active it is.
    pub session_max: Duration,
    /// Largest form post accepted, in bytes.
    pub max_body_bytes: usize,
    /// Per-user storage quota shown on the overview; 0 = none.
    pub quota_bytes: u64,
    /// Sign-up from the panel.
    pub registration: Registration,
    /// Offer the "reset with a new empty keyring" button on the forgot-password page to
    /// anyone who knows a username. Off by default: whoever presses it receives all mail
    /// that arrives afterwards, so most operators keep resets to `coffer user reset`.
    pub allow_self_reset: bool,
    /// Most sessions (signed in or not) kept at once; the oldest anonymous ones go first.
    pub max_sessions: usize,
    /// Most HTTPS connections served at once; more are closed at once.
    pub max_connections: usize,
}

impl Default for PanelConfig {
    fn default() -> Self {
        PanelConfig {
            session_idle: Duration::from_secs(15 * 60),
            session_max: Duration::from_secs(8 * 3600),
            max_body_bytes: 16 * 1024,
            quota_bytes: 0,
            registration: Registration::Closed,
            allow_self_reset: false,
            max_sessions: 10_000,
            max_connections: 512,
        }
    }
}

/// Everything the panel's handlers share.
pub struct PanelCtx {
    pub(crate) mail: Mail,
    pub(crate) config: PanelConfig,
    pub(crate) sessions: session::Sessions,
}

impl PanelCtx {
    pub fn new(mail: Mail, config: PanelConfig) -> Self {
        let sessions =
            session::Sessions::new(config.session_idle, config.session_max, config.max_sessions);
        PanelCtx {
            mail,
            config,
            sessions,
        }
    }

    /// Number of panel sessions currently signed in (all users).
    pub fn signed_in_sessions(&self) -> usize {
        self.sessions.signed_in()
    }

    /// Ends every panel session (signed in or not) at once.
    pub fn end_all_sessions(&self) {
        self.sessions.clear();
    }
}

/// The peer address of a connection, put into each request's extensions.
#[derive(Clone, Copy, Debug)]
pub(crate) struct Peer(pub SocketAddr);

/// Serves the panel over TLS on `listener` until `shutdown` turns true (or its sender
/// goes away). On shutdown every panel session ends, so its keyring reference is dropped.
pub async fn serve(
    ctx: Arc<PanelCtx>,
    listener: tokio::net::TcpListener,
    tls: tokio_rustls::TlsAcceptor,
    mut shutdown: tokio::sync::watch::Receiver<bool>,
) {
    use hyper_util::rt::{TokioIo, TokioTimer};
    use tower::ServiceExt;

    let app = routes::router(ctx.clone());
    let sweeper = {
        let ctx = ctx.clone();
        tokio::spawn(async move {
            let mut tick = tokio::time::interval(Duration::from_secs(10));
            loop {
                tick.tick().await;
                // "Lock now" pressed on another node wipes this node's keys too; the
                // sessions holding them then expire here.
                for s in ctx.sessions.signed_in_handles() {
                    if let Some(a) = &s.auth {
                        let _ = ctx.mail.vault().locked_elsewhere(&a.unlocked).await;
                    }
                }
                ctx.sessions.sweep();
            }
        })
    };
    let slots = Arc::new(tokio::sync::Semaphore::new(
        ctx.config.max_connections.max(1),
    ));
    let mut connections = tokio::task::JoinSet::new();
    loop {
        tokio::select! {
            accepted = listener.accept() => {
                let Ok((tcp, peer)) = accepted else {
                    // Out of file descriptors and the like: do not spin.
                    tokio::time::sleep(Duration::from_millis(50)).await;
                    continue;
                };
                let Ok(slot) = slots.clone().try_acquire_owned() else {
                    drop(tcp);
                    continue;
                };
                let _ = tcp.set_nodelay(true);
                let tls = tls.clone();
                let app = app.clone();
                connections.spawn(async move {
                    let _slot = slot;
                    let Ok(Ok(stream)) =
                        tokio::time::timeout(Duration::from_secs(15), tls.accept(tcp)).await
                    else {
                        return;
                    };
                    let service = hyper::service::service_fn(
                        move |mut req: hyper::Request<hyper::body::Incoming>| {
                            req.extensions_mut().insert(Peer(peer));
                            app.clone().oneshot(req)
                        },
                    );
                    let conn = hyper::server::conn::http1::Builder::new()
                        .timer(TokioTimer::new())
                        .header_read_timeout(Duration::from_secs(30))
                        .serve_connection(TokioIo::new(stream), service);
                    // A panel page is quick: no connection needs to live for long.
                    let _ = tokio::time::timeout(Duration::from_secs(600), conn).await;
                });
                // Reap finished connection tasks so the set does not grow.
                while connections.try_join_next().is_some() {}
            }
            changed = shutdown.changed() => {
                if changed.is_err() || *shutdown.borrow() {
                    break;
                }
            }
        }
    }
    sweeper.abort();
    connections.abort_all();
    ctx.sessions.clear();
}
