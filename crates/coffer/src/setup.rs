//! First start and opening an installation: config, pepper, data directory, TLS
//! certificate, process hardening and the single-server lock.

use crate::config::{self, Config};
use anyhow::{Context, Result, bail};
use coffer_mail::Mail;
use coffer_store::Store;
use coffer_store::sqlite::{DB_FILE, SqliteStore};
use coffer_vault::{Pepper, RecoveryPublicKey, Vault, VaultConfig};
use std::fs;
use std::os::unix::fs::{OpenOptionsExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

/// Everything a command needs, opened and checked.
pub struct Env {
    pub cfg: Config,
    pub config_path: PathBuf,
    pub store: Arc<dyn Store>,
    pub vault: Arc<Vault>,
    pub mail: Mail,
    /// True if this call created the installation.
    pub created: bool,
}

const PEPPER_CHECK_KEY: &str = "pepper_check";

/// No core dumps, not ptrace-attachable by other users' processes: keys and passwords
/// in this process's memory must not land on disk (CRYPTO.md, "Keys in memory").
pub fn harden_process() -> Result<()> {
    use rustix::process::{DumpableBehavior, Resource, Rlimit, set_dumpable_behavior, setrlimit};
    setrlimit(
        Resource::Core,
        Rlimit {
            current: Some(0),
            maximum: Some(0),
        },
    )
    .context("disabling core dumps (RLIMIT_CORE)")?;
    set_dumpable_behavior(DumpableBehavior::NotDumpable)
        .context("marking the process non-dumpable (PR_SET_DUMPABLE)")?;
    Ok(())
}

/// Opens the installation at `config_path`, creating it on first start: config (with a
/// calibrated Argon2id cost), data directory, pepper file and self-signed certificate.
/// How a command may treat a missing installation.
#[derive(Clone, Copy, PartialEq, Eq)]
pub enum Start {
    /// `coffer init`: create whatever is missing, also a database beside an existing pepper.
    Init,
    /// `coffer serve`: a true first start creates everything; a pepper without a database
    /// (an unmounted data volume?) is refused.
    Serve,
    /// Every other command: the installation must exist.
    Existing,
}

pub async fn open_or_init(
    config_path: &Path,
    profile: Option<&str>,
    quiet: bool,
    start: Start,
) -> Result<Env> {
    let mut created = false;
    if !config_path.exists() && start == Start::Existing {
        bail!(
            "no Coffer installation here: {} does not exist. Run `coffer init` (or `coffer serve`) first, or pass --config",
            config_path.display()
        );
    }
    if !config_path.exists() {
        let profile = profile.unwrap_or(config::CALIBRATED_PROFILE);
        let (memory, time) = match profile {
            config::CALIBRATED_PROFILE => {
                let memory = coffer_vault::kdf::DEFAULT_MEMORY_KIB;
                let (params, took) = tokio::task::spawn_blocking(move || {
                    coffer_vault::kdf::calibrate(memory, coffer_vault::kdf::TARGET)
                })
                .await
                .context("calibration task")??;
                if !quiet {
                    eprintln!(
                        "Calibrated Argon2id: {} MiB, time cost {}, {} ms per derivation on this machine.",
                        params.memory_kib / 1024,
                        params.time_cost,
                        took.as_millis()
                    );
                }
                (params.memory_kib, params.time_cost)
            }
            config::INSECURE_PROFILE => (coffer_vault::kdf::INSECURE_TEST_PARAMS.memory_kib, 1),
            other => bail!(
                "unknown --kdf-profile {other:?}: use calibrated or {}",
                config::INSECURE_PROFILE
            ),
        };
        let concurrency = std::thread::available_parallelism()
            .map(|n| n.get())
            .unwrap_or(2)
            .clamp(1, 8);
        if let Some(parent) = config_path.parent().filter(|p| !p.as_os_str().is_empty()) {
            fs::create_dir_all(parent).with_context(|| format!("creating {}", parent.display()))?;
        }
        let text = config::template(profile, memory, time, concurrency);
        let mut f = fs::OpenOptions::new()
            .write(true)
            .create_new(true)
            .mode(0o640)
            .open(config_path)
            .with_context(|| format!("creating config {}", config_path.display()))?;
        std::io::Write::write_all(&mut f, text.as_bytes())
            .with_context(|| format!("writing config {}", config_path.display()))?;
        created = true;
    }
    let cfg = Config::load(config_path)?;
    let data_dir = cfg.data_dir();
    let pepper_path = cfg.pepper_path();
    let postgres = cfg.storage.postgres_url().map(str::to_string);
    // For PostgreSQL, "has data" means the database already belongs to an installation.
    let pg_store: Option<Arc<dyn Store>> = match &postgres {
        Some(url) => Some(Arc::new(
            coffer_store::postgres::PgStore::connect(url).await?,
        )),
        None => None,
    };
    let has_data = match &pg_store {
        Some(s) => {
            s.get_meta(PEPPER_CHECK_KEY).await?.is_some() || !s.list_accounts().await?.is_empty()
        }
        None => data_dir.join(DB_FILE).exists(),
    };

    if !has_data && pepper_path.exists() && start != Start::Init {
        bail!(
            "pepper file {} exists but the data directory {} has no database. Is the data volume mounted? To start a new installation with this pepper, run `coffer init`",
            pepper_path.display(),
            data_dir.display()
        );
    }
    if !has_data && start == Start::Existing {
        bail!(
            "data directory {} has no database; run `coffer init` first",
            data_dir.display()
        );
    }
    let pepper = if has_data || pepper_path.exists() {
        Pepper::load(&pepper_path)?
    } else {
        created = true;
        Pepper::create(&pepper_path)?
    };
    if has_data {
        // Verify before anything is written: a wrong pepper changes nothing.
        let store: Arc<dyn Store> = match &pg_store {
            Some(s) => s.clone(),
            None => Arc::new(
                SqliteStore::open(&data_dir)
                    .with_context(|| format!("opening data directory {}", data_dir.display()))?,
            ),
        };
        match store.get_meta(PEPPER_CHECK_KEY).await? {
            Some(check) => pepper.verify(&check)?,
            None => {
                if !store.list_accounts().await?.is_empty() {
                    bail!(
                        "data directory {} has accounts but no pepper check value; refusing to guess",
                        data_dir.display()
                    );
                }
            }
        }
    }
    fs::create_dir_all(&data_dir)
        .with_context(|| format!("creating data directory {}", data_dir.display()))?;
    fs::set_permissions(&data_dir, fs::Permissions::from_mode(0o700))
        .with_context(|| format!("setting mode of {}", data_dir.display()))?;
    let store: Arc<dyn Store> = match pg_store {
        Some(s) => s,
        None => Arc::new(
            SqliteStore::open(&data_dir)
                .with_context(|| format!("opening data directory {}", data_dir.display()))?,
        ),
    };
    if store.get_meta(PEPPER_CHECK_KEY).await?.is_none() {
        store
            .set_meta(PEPPER_CHECK_KEY, &pepper.check_value())
            .await?;
    }
    if start != Start::Existing && ensure_certificate(&cfg)? {
        created = true;
    }

    let recovery_key = match cfg.recovery.public_key.trim() {
        "" => None,
        k => Some(RecoveryPublicKey::parse(k)?),
    };
    let vault = Arc::new(Vault::new(
        store.clone(),
        Arc::new(pepper),
        VaultConfig {
            kdf: cfg.kdf_params(),
            argon2_concurrency: cfg.kdf.concurrency,
            grace: Duration::from_secs(cfg.keys.grace_seconds),
            recovery_key,
        },
    ));
    let mail = Mail::new(vault.clone()).with_max_message_bytes(cfg.limits.max_message_bytes);
    if created && !quiet {
        print_first_start(&cfg, config_path);
    }
    Ok(Env {
        cfg,
        config_path: config_path.to_path_buf(),
        store,
        vault,
        mail,
        created,
    })
}

/// Creates a self-signed certificate for localhost if neither file exists.
fn ensure_certificate(cfg: &Config) -> Result<bool> {
    let (cert, key) = (cfg.cert_path(), cfg.key_path());
    match (cert.exists(), key.exists()) {
        (true, true) => return Ok(false),
        (false, false) => {}
        _ => bail!(
            "only one of the TLS files exists ({} / {}); provide both or remove both",
            cert.display(),
            key.display()
        ),
    }
    let generated = rcgen::generate_simple_self_signed(vec![
        "localhost".to_string(),
        "127.0.0.1".to_string(),
        "::1".to_string(),
    ])
    .context("generating a self-signed certificate")?;
    for p in [&cert, &key] {
        if let Some(parent) = p.parent() {
            fs::create_dir_all(parent).with_context(|| format!("creating {}", parent.display()))?;
        }
    }
    let mut kf = fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o600)
        .open(&key)
        .with_context(|| format!("creating {}", key.display()))?;
    std::io::Write::write_all(&mut kf, generated.signing_key.serialize_pem().as_bytes())
        .with_context(|| format!("writing {}", key.display()))?;
    fs::write(&cert, generated.cert.pem())
        .with_context(|| format!("writing {}", cert.display()))?;
    Ok(true)
}

fn print_first_start(cfg: &Config, config_path: &Path) {
    eprintln!(
        "Coffer is set up.
  config:       {}
  data:         {}
  pepper:       {}   (mode 0600; back it up apart from the data: losing it loses every mailbox)
  certificate:  {} (self-signed for localhost)
  IMAP:         {} (STARTTLS), {} (TLS)
  LMTP:         {}{}
  panel:        https://{}
Add the first user with:
  coffer user add alice",
        config_path.display(),
        cfg.data_dir().display(),
        cfg.pepper_path().display(),
        cfg.cert_path().display(),
        cfg.imap.listen.join(", "),
        cfg.imap.listen_tls.join(", "),
        cfg.lmtp.listen.join(", "),
        if cfg.lmtp.socket.trim().is_empty() {
            String::new()
        } else {
            format!(", socket {}", cfg.lmtp.socket.trim())
        },
        cfg.panel.listen
    );
}

/// The exclusive lock a running server holds on its data directory.
pub struct ServerLock {
    _file: fs::File,
}

pub fn lock_data_dir(data_dir: &Path) -> Result<ServerLock> {
    use rustix::fs::{FlockOperation, flock};
    let path = data_dir.join("coffer.lock");
    let file = fs::OpenOptions::new()
        .create(true)
        .truncate(false)
        .write(true)
        .mode(0o600)
        .open(&path)
        .with_context(|| format!("opening lock file {}", path.display()))?;
    if flock(&file, FlockOperation::NonBlockingLockExclusive).is_err() {
        bail!(
            "another `coffer serve` is already running on {} (lock {} is held)",
            data_dir.display(),
            path.display()
        );
    }
    Ok(ServerLock { _file: file })
}
