//! `coffer`: the server and its admin commands. A thin layer wiring the crates together;
//! every rule lives in the libraries.

mod config;
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
        Command::Check {
            user,
            password_stdin,
        } => {
            let env = setup::open_or_init(&cli.config, None, false, setup::Start::Existing).await?;
            user::check(&env, user.as_deref(), password_stdin).await
        }
    }
}

async fn serve(config: &std::path::Path) -> Result<()> {
    let env = setup::open_or_init(config, None, false, setup::Start::Serve).await?;
    init_logging(&env.cfg.log.level);
    let _lock = setup::lock_data_dir(&env.cfg.data_dir())?;
    use coffer_store::Store;
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
    let ctx = coffer_imap::server::Ctx::new(env.mail.clone(), imap_config, Some(tls));
    let (stop_tx, stop_rx) = tokio::sync::watch::channel(false);
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
    sweeper.abort();
    tracing::info!("coffer stopping");
    Ok(())
}
