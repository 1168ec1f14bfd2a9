//! `coffer`: the server and its admin commands. A thin layer wiring the crates together;
//! every rule lives in the libraries.

mod config;
mod migrate;
mod prompt;
mod setup;
mod user;

use anyhow::{Context, Result};
use clap::{Parser, Subcommand};
use std::path::PathBuf;

/// Coffer: an IMAP server whose stored mail only its owner can open.
#[derive(Parser)]
#[command(name = "coffer", version, about, long_about = None)]
struct Cli {
    /// Config file; created with defaults on first start.
    #[arg(
        long,
        global = true,
        env = "COFFER_CONFIG",
        default_value = "coffer.toml"
    )]
    config: PathBuf,
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Create the config, data directory, pepper file and TLS certificate if missing.
    Init {
        /// Argon2id cost profile written to a new config: "calibrated" (measured here,
        /// about 250 ms per login) or "insecure-fast-for-tests" (test suites only).
        #[arg(long, default_value = "calibrated")]
        kdf_profile: String,
    },
    /// Run the server (first start sets everything up, as `init` does).
    Serve,
    /// Manage accounts, their passwords, app passwords, recovery codes and mode.
    #[command(subcommand)]
    User(user::UserCommand),
    /// The operator's offline recovery key for low security mode.
    #[command(subcommand, name = "recovery-key")]
    RecoveryKey(RecoveryKeyCommand),
    /// Deliver one message from standard input to a user, sealed to their public key (a
    /// local delivery agent for Postfix's mailbox_command, procmail or fetchmail). Exit
    /// codes follow sysexits: 0 delivered, 67 unknown user, 65 too large, 75 temporary
    /// failure (retry later), 64 bad usage.
    Deliver {
        /// The recipient: a username (user+tag delivers to user, into folder tag if it exists).
        #[arg(long)]
        to: String,
        /// Deliver into this mailbox instead of INBOX, if it exists.
        #[arg(long)]
        mailbox: Option<String>,
        /// Envelope sender, recorded in a Return-Path header.
        #[arg(long)]
        from: Option<String>,
    },
    /// Copy the whole installation (every account, key slot, mailbox, message and blob,
    /// still encrypted) from the store the config selects to another store: a PostgreSQL
    /// URL or an embedded data directory. Nothing is decrypted; no password is needed.
    /// Stop the servers first; then point the config at the target and run `coffer check`.
    Migrate(migrate::MigrateArgs),
    /// Invitation codes for panel sign-up when [panel] registration = "invite".
    #[command(subcommand)]
    Invite(InviteCommand),
    /// Check the store's integrity (no password needed); with --user, also open every
    /// message of that user (asks for their password).
    Check {
        /// Also decrypt and verify every message of this user.
        #[arg(long)]
        user: Option<String>,
        /// Read the password from standard input instead of the terminal.
        #[arg(long)]
        password_stdin: bool,
    },
}

#[derive(Subcommand)]
enum InviteCommand {
    /// Make one-time invitation codes (printed once; only a keyed hash is stored).
    Create {
        /// How many codes to make.
        #[arg(long, default_value_t = 1)]
        count: u32,
    },
}

#[derive(Subcommand)]
enum RecoveryKeyCommand {
    /// Generate the key pair: the secret goes to FILE (take it offline), the public half
    /// into the config's [recovery] public_key.
    Generate {
        /// Where to write the secret key (mode 0600). Refuses to overwrite.
        #[arg(long)]
        out: PathBuf,
    },
}

fn main() -> std::process::ExitCode {
    if let Err(e) = setup::harden_process() {
        eprintln!("coffer: {e:#}");
        return std::process::ExitCode::FAILURE;
    }
    let cli = Cli::parse();
    let runtime = match tokio::runtime::Runtime::new() {
        Ok(r) => r,
        Err(e) => {
            eprintln!("coffer: starting the runtime: {e}");
            return std::process::ExitCode::FAILURE;
        }
    };
    match runtime.block_on(run(cli)) {
        Ok(()) => std::process::ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("coffer: {e:#}");
            std::process::ExitCode::FAILURE
        }
    }
}

fn init_logging(level: &str) {
    let filter = tracing_subscriber::EnvFilter::try_from_env("COFFER_LOG")
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new(level));
    let _ = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .try_init();
}

async fn run(cli: Cli) -> Result<()> {
    match cli.command {
        Command::Init { kdf_profile } => {
            let env =
                setup::open_or_init(&cli.config, Some(&kdf_profile), false, setup::Start::Init)
                    .await?;
            if !env.created {
                eprintln!(
                    "Coffer is already set up at {} (data in {}).",
                    cli.config.display(),
                    env.cfg.data_dir().display()
                );
            }
            Ok(())
        }
        Command::Serve => serve(&cli.config).await,
        Command::User(cmd) => {
            let env = setup::open_or_init(&cli.config, None, false, setup::Start::Existing).await?;
            user::run(&env, cmd).await
        }
        Command::RecoveryKey(RecoveryKeyCommand::Generate { out }) => {
            let env = setup::open_or_init(&cli.config, None, false, setup::Start::Existing).await?;
            user::generate_recovery_key(&env, &out)
        }
        Command::Deliver { to, mailbox, from } => {
            let code = deliver(&cli.config, &to, mailbox.as_deref(), from.as_deref()).await;
            std::process::exit(code);
        }
        Command::Migrate(args) => migrate::run(&cli.config, args).await,
        Command::Invite(InviteCommand::Create { count }) => {
            let env = setup::open_or_init(&cli.config, None, false, setup::Start::Existing).await?;
            if env.cfg.panel.registration != "invite" {
                eprintln!(
                    "note: [panel] registration is {:?}; codes are accepted only with \"invite\"",
                    env.cfg.panel.registration
                );
            }
            for _ in 0..count.clamp(1, 1000) {
                let code =
                    coffer_mail::invites::create(env.store.as_ref(), env.vault.pepper()).await?;
                println!("{code}");
            }
            Ok(())
        }
        Command::Check {
            user,
            password_stdin,
        } => {
            let env = setup::open_or_init(&cli.config, None, false, setup::Start::Existing).await?;
            user::check(&env, user.as_deref(), password_stdin).await
        }
    }
}

/// `coffer deliver`: returns the sysexits code.
async fn deliver(
    config: &std::path::Path,
    to: &str,
    mailbox: Option<&str>,
    from: Option<&str>,
) -> i32 {
    const EX_USAGE: i32 = 64;
    const EX_DATAERR: i32 = 65;
    const EX_NOUSER: i32 = 67;
    const EX_TEMPFAIL: i32 = 75;
    let env = match setup::open_or_init(config, None, true, setup::Start::Existing).await {
        Ok(e) => e,
        Err(e) => {
            eprintln!("coffer deliver: {e:#}");
            return EX_TEMPFAIL;
        }
    };
    let lmtp = lmtp_config(&env);
    let recipient = match coffer_lmtp::resolve_recipient(&env.mail, &lmtp, to).await {
        Ok(r) => r,
        Err(coffer_lmtp::ResolveError::Syntax) => {
            eprintln!("coffer deliver: {to:?} is not a valid recipient");
            return EX_USAGE;
        }
        Err(coffer_lmtp::ResolveError::Unavailable) => {
            eprintln!("coffer deliver: storage is unavailable; try again later");
            return EX_TEMPFAIL;
        }
        Err(_) => {
            eprintln!("coffer deliver: no such user");
            return EX_NOUSER;
        }
    };
    let target = match mailbox.map(coffer_types::MailboxName::new).transpose() {
        Ok(m) => m.or(recipient.detail.clone()),
        Err(e) => {
            eprintln!("coffer deliver: invalid mailbox name: {e}");
            return EX_USAGE;
        }
    };
    let limit = env.cfg.limits.max_message_bytes;
    let mut body = Vec::new();
    use tokio::io::AsyncReadExt;
    if let Err(e) = tokio::io::stdin()
        .take(limit + 1)
        .read_to_end(&mut body)
        .await
    {
        eprintln!("coffer deliver: reading the message: {e}");
        return EX_TEMPFAIL;
    }
    if body.len() as u64 > limit {
        eprintln!("coffer deliver: message is larger than {limit} bytes");
        return EX_DATAERR;
    }
    // Bare LF line ends (from a pipe) become CRLF, as IMAP clients expect.
    let mut message = Vec::with_capacity(body.len() + body.len() / 40 + 128);
    if let Some(f) = from {
        message.extend_from_slice(format!("Return-Path: <{f}>\r\n").as_bytes());
    }
    message.extend_from_slice(format!("Delivered-To: {to}\r\n").as_bytes());
    let mut prev = 0u8;
    for &b in &body {
        if b == b'\n' && prev != b'\r' {
            message.push(b'\r');
        }
        message.push(b);
        prev = b;
    }
    drop(body);
    if env.cfg.limits.quota_bytes > 0 {
        let used = env.store.stored_bytes(&recipient.user).await.unwrap_or(0);
        if used + message.len() as u64 > env.cfg.limits.quota_bytes {
            eprintln!("coffer deliver: mailbox is over quota");
            return EX_TEMPFAIL;
        }
    }
    match env
        .mail
        .deliver(
            &recipient.user,
            target.as_ref(),
            message,
            coffer_mail::InternalDate::now(),
        )
        .await
    {
        Ok(_) => 0,
        Err(coffer_mail::MailError::TooLarge(_)) => EX_DATAERR,
        Err(coffer_mail::MailError::NoSuchUser) => EX_NOUSER,
        Err(e) => {
            eprintln!("coffer deliver: {e}");
            EX_TEMPFAIL
        }
    }
}

fn lmtp_config(env: &setup::Env) -> coffer_lmtp::LmtpConfig {
    let hostname = rustix::system::uname()
        .nodename()
        .to_string_lossy()
        .into_owned();
    coffer_lmtp::LmtpConfig {
        hostname: if hostname.is_empty() {
            "localhost".into()
        } else {
            hostname
        },
        local_domains: env.cfg.lmtp.local_domains.clone(),
        max_message_bytes: env.cfg.limits.max_message_bytes,
        quota_bytes: env.cfg.limits.quota_bytes,
        ..Default::default()
    }
}

async fn serve(config: &std::path::Path) -> Result<()> {
    let env = setup::open_or_init(config, None, false, setup::Start::Serve).await?;
    init_logging(&env.cfg.log.level);
    // One server per embedded data directory; with PostgreSQL, several nodes share the
    // database and each keeps only its TLS files and pepper locally.
    let _lock = match env.cfg.storage.postgres_url() {
        None => Some(setup::lock_data_dir(&env.cfg.data_dir())?),
        Some(_) => None,
    };
    let swept = env
        .store
        .sweep_orphans(600)
        .await
        .context("sweeping unreferenced blobs")?;
    tracing::info!(swept, "store opened");

    let tls = coffer_imap::server::tls_acceptor(&env.cfg.cert_path(), &env.cfg.key_path())
        .map_err(anyhow::Error::msg)?;
    let imap_config = coffer_imap::server::ImapConfig {
        allow_plaintext_login_on_loopback: env.cfg.imap.allow_plaintext_login_on_loopback,
        max_message_bytes: env.cfg.limits.max_message_bytes,
        quota_bytes: env.cfg.limits.quota_bytes,
        ..Default::default()
    };
    let mut listeners = Vec::new();
    let mut bound = Vec::new();
    for (addrs, implicit_tls) in [
        (&env.cfg.imap.listen, false),
        (&env.cfg.imap.listen_tls, true),
    ] {
        for addr in addrs {
            let socket = tokio::net::TcpListener::bind(addr).await.with_context(|| {
                format!(
                    "cannot listen on {addr} (from {})",
                    env.config_path.display()
                )
            })?;
            bound.push(format!(
                "{} ({})",
                socket.local_addr()?,
                if implicit_tls {
                    "IMAPS"
                } else {
                    "IMAP+STARTTLS"
                }
            ));
            listeners.push(coffer_imap::server::Listener {
                socket,
                implicit_tls,
            });
        }
    }
    let panel_tls = tls.clone();
    let ctx = coffer_imap::server::Ctx::new(env.mail.clone(), imap_config, Some(tls.clone()));
    let (stop_tx, stop_rx) = tokio::sync::watch::channel(false);
    let lmtp = std::sync::Arc::new(lmtp_config(&env));
    for addr in &env.cfg.lmtp.listen {
        let socket = tokio::net::TcpListener::bind(addr).await.with_context(|| {
            format!(
                "cannot listen on {addr} for LMTP (from {})",
                env.config_path.display()
            )
        })?;
        bound.push(format!("{} (LMTP)", socket.local_addr()?));
        tokio::spawn(coffer_lmtp::serve_tcp_with_tls(
            env.mail.clone(),
            lmtp.clone(),
            socket,
            Some(tls.clone()),
            stop_rx.clone(),
        ));
    }
    if !env.cfg.lmtp.socket.trim().is_empty() {
        let path = env
            .cfg
            .resolve(std::path::Path::new(env.cfg.lmtp.socket.trim()));
        // A socket left by an earlier run (we hold the data directory lock, so it is ours).
        let stale = std::fs::symlink_metadata(&path).is_ok_and(|m| {
            use std::os::unix::fs::FileTypeExt;
            m.file_type().is_socket()
        });
        if stale {
            let _ = std::fs::remove_file(&path);
        }
        let socket = tokio::net::UnixListener::bind(&path)
            .with_context(|| format!("cannot listen on LMTP socket {}", path.display()))?;
        use std::os::unix::fs::PermissionsExt;
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o660))
            .with_context(|| format!("setting the mode of {}", path.display()))?;
        bound.push(format!("{} (LMTP)", path.display()));
        tokio::spawn(coffer_lmtp::serve_unix(
            env.mail.clone(),
            lmtp.clone(),
            socket,
            stop_rx.clone(),
        ));
    }
    let panel = if env.cfg.panel.listen.trim().is_empty() {
        None
    } else {
        let addr = env.cfg.panel.listen.trim();
        let socket = tokio::net::TcpListener::bind(addr).await.with_context(|| {
            format!(
                "cannot listen on {addr} for the panel (from {})",
                env.config_path.display()
            )
        })?;
        bound.push(format!("{} (panel)", socket.local_addr()?));
        let panel_ctx = std::sync::Arc::new(coffer_panel::PanelCtx::new(
            env.mail.clone(),
            coffer_panel::PanelConfig {
                quota_bytes: env.cfg.limits.quota_bytes,
                registration: match env.cfg.panel.registration.as_str() {
                    "open" => coffer_panel::Registration::Open,
                    "invite" => coffer_panel::Registration::Invite,
                    _ => coffer_panel::Registration::Closed,
                },
                allow_self_reset: env.cfg.panel.allow_self_reset,
                ..Default::default()
            },
        ));
        Some(tokio::spawn(coffer_panel::serve(
            panel_ctx,
            socket,
            panel_tls,
            stop_rx.clone(),
        )))
    };
    let imap = tokio::spawn(coffer_imap::server::serve(ctx, listeners, stop_rx));

    // Handlers first: a SIGTERM right after the "running" line must stop us cleanly.
    let mut term = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())
        .context("installing SIGTERM handler")?;
    let mut interrupt = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::interrupt())
        .context("installing SIGINT handler")?;
    eprintln!(
        "coffer serve: running on {} (pid {}); listening on {}. Stop with Ctrl-C or SIGTERM.",
        env.cfg.data_dir().display(),
        std::process::id(),
        bound.join(", ")
    );
    let registry = env.vault.registry().clone();
    let sweeper = tokio::spawn(async move {
        let mut tick = tokio::time::interval(std::time::Duration::from_secs(5));
        loop {
            tick.tick().await;
            registry.sweep();
        }
    });

    tokio::select! {
        _ = interrupt.recv() => {}
        _ = term.recv() => {}
    }
    let _ = stop_tx.send(true);
    let _ = imap.await;
    if let Some(panel) = panel {
        let _ = panel.await;
    }
    sweeper.abort();
    tracing::info!("coffer stopping");
    Ok(())
}
