//! Durable appends and delivery into the embedded store (SQLite + sealed blob files).
//!
//! Every run builds a fresh store in its own temporary directory, a vault with the
//! deliberately cheap test KDF (login cost is measured separately and is not part of an
//! append), and one user. Each append is durable when it returns: blob written and
//! fsync'd, its directory fsync'd, the row committed to the WAL with `synchronous=FULL`.

use coffer_mail::{InternalDate, Mail, MailError, deliver};
use coffer_store::Store;
use coffer_store::sqlite::SqliteStore;
use coffer_types::{MailboxId, SecurityMode};
use coffer_vault::kdf::INSECURE_TEST_PARAMS;
use coffer_vault::{Pepper, Unlocked, Vault, VaultConfig};
use std::io::Write;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant};
use tokio::task::JoinSet;

pub type BoxError = Box<dyn std::error::Error + Send + Sync>;

/// Appends made before the timed ones in every run (first connection, first blob
/// directories, page cache); not counted.
pub const WARM_UP_APPENDS: usize = 5;

pub struct StoreSettings {
    pub appends: usize,
    pub concurrent_appends: usize,
    pub tasks: usize,
    pub deliveries: usize,
    pub fsync_samples: usize,
}

/// Figures of one run.
pub struct RunFigures {
    /// Sequential appends: messages per second.
    pub sequential_rate: f64,
    /// Seconds of each sequential append.
    pub sequential_latencies: Vec<f64>,
    /// Appends from concurrent tasks: messages per second.
    pub concurrent_rate: f64,
    /// Sequential deliveries (public key only): messages per second.
    pub delivery_rate: f64,
    /// Seconds of each baseline write + fsync + directory fsync.
    pub fsync_latencies: Vec<f64>,
}

/// A directory removed (with everything in it) when dropped.
pub struct TempDir(PathBuf);

impl TempDir {
    pub fn new(parent: &Path, prefix: &str) -> std::io::Result<TempDir> {
        let dir = parent.join(format!(
            "{prefix}-{}-{:016x}",
            std::process::id(),
            rand::random::<u64>()
        ));
        std::fs::create_dir_all(&dir)?;
        Ok(TempDir(dir))
    }

    pub fn path(&self) -> &Path {
        &self.0
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

struct Env {
    mail: Mail,
    session: Unlocked,
    inbox: MailboxId,
}

async fn setup(dir: &Path) -> Result<Env, BoxError> {
    let store: Arc<dyn Store> = Arc::new(SqliteStore::open(&dir.join("coffer-data"))?);
    let pepper = Arc::new(Pepper::from_bytes(rand::random()));
    let vault = Arc::new(Vault::new(
        store,
        pepper,
        VaultConfig {
            kdf: INSECURE_TEST_PARAMS,
            argon2_concurrency: 1,
            grace: Duration::from_secs(3600),
            recovery_key: None,
        },
    ));
    let mail = Mail::new(vault);
    let session = mail
        .create_user("bench", "correct horse battery staple", SecurityMode::High)
        .await?;
    let inbox = mail
        .list_mailboxes(&session)
        .await?
        .into_iter()
        .find(|m| m.name.is_inbox())
        .ok_or("the new user has no INBOX")?
        .id;
    Ok(Env {
        mail,
        session,
        inbox,
    })
}

/// The cost of durability itself, without Coffer: write a file of `body`'s size, fsync
/// it, rename it, fsync the directory (what every blob write does).
fn fsync_baseline(dir: &Path, body: &[u8], samples: usize) -> std::io::Result<Vec<f64>> {
    let dir = dir.join("fsync-baseline");
    std::fs::create_dir_all(&dir)?;
    let mut out = Vec::with_capacity(samples);
    for i in 0..samples {
        let start = Instant::now();
        let tmp = dir.join(format!("{i}.tmp"));
        let mut f = std::fs::File::create(&tmp)?;
        f.write_all(body)?;
        f.sync_all()?;
        drop(f);
        std::fs::rename(&tmp, dir.join(i.to_string()))?;
        std::fs::File::open(&dir)?.sync_all()?;
        out.push(start.elapsed().as_secs_f64());
    }
    Ok(out)
}

/// One run in a fresh store under `parent`.
pub async fn run(
    parent: &Path,
    s: &StoreSettings,
    body: Arc<Vec<u8>>,
) -> Result<RunFigures, BoxError> {
    let tmp = TempDir::new(parent, "coffer-bench")?;
    let env = setup(tmp.path()).await?;
    let Env {
        mail,
        session,
        inbox,
    } = &env;
    let (mail, session, inbox) = (mail, session, *inbox);

    for _ in 0..WARM_UP_APPENDS {
        mail.append(session, inbox, &body, &[], InternalDate::now())
            .await?;
    }

    // Sequential appends, one at a time, each durable before the next starts.
    let mut sequential_latencies = Vec::with_capacity(s.appends);
    let start = Instant::now();
    for _ in 0..s.appends {
        let t = Instant::now();
        mail.append(session, inbox, &body, &[], InternalDate::now())
            .await?;
        sequential_latencies.push(t.elapsed().as_secs_f64());
    }
    let sequential_rate = s.appends as f64 / start.elapsed().as_secs_f64();

    // The same from concurrent tasks, each with its own session on the same keyring (as
    // several IMAP connections of one user would be).
    let mut sessions = Vec::with_capacity(s.tasks);
    for _ in 0..s.tasks {
        sessions.push(session.another_session()?);
    }
    let start = Instant::now();
    let mut set = JoinSet::new();
    for (t, task_session) in sessions.into_iter().enumerate() {
        let n = s.concurrent_appends / s.tasks + usize::from(t < s.concurrent_appends % s.tasks);
        let (mail, body) = (mail.clone(), body.clone());
        set.spawn(async move {
            for _ in 0..n {
                mail.append(&task_session, inbox, &body, &[], InternalDate::now())
                    .await?;
            }
            Ok::<(), MailError>(())
        });
    }
    while let Some(done) = set.join_next().await {
        done??;
    }
    let concurrent_rate = s.concurrent_appends as f64 / start.elapsed().as_secs_f64();

    // Delivery: sealed to the public key, no keyring involved.
    let store = mail.vault().store().clone();
    let pepper = mail.vault().pepper();
    let user = *session.user_id();
    let start = Instant::now();
    for _ in 0..s.deliveries {
        deliver(
            store.as_ref(),
            pepper,
            &user,
            None,
            &body,
            InternalDate::now(),
        )
        .await?;
    }
    let delivery_rate = s.deliveries as f64 / start.elapsed().as_secs_f64();

    let stored = store.list_messages(&user, inbox).await?.len();
    let expected = WARM_UP_APPENDS + s.appends + s.concurrent_appends + s.deliveries;
    if stored != expected {
        return Err(format!("INBOX holds {stored} messages, expected {expected}").into());
    }

    let fsync_latencies = fsync_baseline(tmp.path(), &body, s.fsync_samples)?;
    Ok(RunFigures {
        sequential_rate,
        sequential_latencies,
        concurrent_rate,
        delivery_rate,
        fsync_latencies,
    })
}
