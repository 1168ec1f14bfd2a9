//! `coffer migrate`: copies a whole installation from its current store (the one its
//! config selects, embedded or PostgreSQL) to another store, without decrypting anything.
//!
//! Every row is copied exactly as stored (ciphertext stays ciphertext; ids, UIDVALIDITY,
//! UIDNEXT, HIGHESTMODSEQ, UIDs and MODSEQs are kept) and every referenced blob byte for
//! byte. No key or password is needed, and the pepper is not read: user ids and the
//! pepper check value travel as they are, so the migrated installation opens with the same
//! pepper file.

use crate::config::Config;
use anyhow::{Context, Result, bail};
use clap::Args;
use coffer_store::postgres::PgStore;
use coffer_store::sqlite::SqliteStore;
use coffer_store::{Store, UserExport};
use coffer_types::{BlobId, UserId};
use std::collections::HashSet;
use std::io::Write;
use std::path::{Path, PathBuf};

#[derive(Args)]
pub struct MigrateArgs {
    /// Where to copy the installation: a PostgreSQL URL (`postgres://user@host/db` or
    /// `postgresql://...`) to move to PostgreSQL, or a directory to move to the embedded
    /// store (created if missing). The source is the store the config selects. The target
    /// must hold no accounts. Stop every `coffer serve` using the source first.
    #[arg(long, value_name = "URL|DIR")]
    to: String,
}

/// One side of a migration, with the raw export/import methods of its backend.
enum Side {
    Pg(PgStore),
    Embedded(SqliteStore),
}

impl Side {
    fn store(&self) -> &dyn Store {
        match self {
            Side::Pg(s) => s,
            Side::Embedded(s) => s,
        }
    }

    fn describe(&self) -> String {
        match self {
            Side::Pg(s) => format!("PostgreSQL {}", s.url()),
            Side::Embedded(s) => format!("embedded store {}", s.dir().display()),
        }
    }

    async fn export_meta(&self) -> coffer_store::Result<Vec<(String, Vec<u8>)>> {
        match self {
            Side::Pg(s) => s.export_meta().await,
            Side::Embedded(s) => s.export_meta().await,
        }
    }

    async fn export_user(&self, user: &UserId) -> Result<UserExport> {
        let st = self.store();
        let account = st
            .get_account(user)
            .await?
            .with_context(|| format!("account {user} vanished during the migration"))?;
        let mailboxes = st.list_mailboxes(user).await?;
        let mut messages = Vec::new();
        for m in &mailboxes {
            messages.extend(st.list_messages(user, m.id).await?);
        }
        let expunged = match self {
            Side::Pg(s) => s.export_expunged(user).await?,
            Side::Embedded(s) => s.export_expunged(user).await?,
        };
        Ok(UserExport {
            account,
            keyrings: st.list_keyrings(user).await?,
            links: st.list_links(user).await?,
            slots: st.list_slots(user).await?,
            mailboxes,
            messages,
            expunged,
        })
    }

    async fn import_user(&self, u: UserExport) -> coffer_store::Result<()> {
        match self {
            Side::Pg(s) => s.import_user(&u).await,
            Side::Embedded(s) => s.import_user(u).await,
        }
    }
}

fn is_postgres_url(s: &str) -> bool {
    let s = s.trim();
    s.starts_with("postgres://") || s.starts_with("postgresql://")
}

pub async fn run(config_path: &Path, args: MigrateArgs) -> Result<()> {
    let cfg = Config::load(config_path)?;
    // The source: the store this config selects. An embedded one is locked like a running
    // server would lock it, so that no server writes to it during the copy.
    let mut _lock = None;
    let source = match cfg.storage.postgres_url() {
        Some(url) => Side::Pg(PgStore::connect(url).await?),
        None => {
            let dir = cfg.data_dir();
            if !dir.join(coffer_store::sqlite::DB_FILE).exists() {
                bail!(
                    "no embedded store in {} (from {}): nothing to migrate",
                    dir.display(),
                    config_path.display()
                );
            }
            _lock = Some(crate::setup::lock_data_dir(&dir)?);
            Side::Embedded(
                SqliteStore::open(&dir)
                    .with_context(|| format!("opening data directory {}", dir.display()))?,
            )
        }
    };
    let target = if is_postgres_url(&args.to) {
        Side::Pg(PgStore::connect(args.to.trim()).await?)
    } else {
        let dir = cfg.resolve(&PathBuf::from(&args.to));
        if let Side::Embedded(s) = &source
            && same_dir(s.dir(), &dir)
        {
            bail!("the target {} is the source itself", dir.display());
        }
        std::fs::create_dir_all(&dir).with_context(|| format!("creating {}", dir.display()))?;
        use std::os::unix::fs::PermissionsExt;
        std::fs::set_permissions(&dir, std::fs::Permissions::from_mode(0o700))
            .with_context(|| format!("setting the mode of {}", dir.display()))?;
        Side::Embedded(
            SqliteStore::open(&dir).with_context(|| format!("opening {}", dir.display()))?,
        )
    };
    if let (Side::Pg(a), Side::Pg(b)) = (&source, &target)
        && a.url() == b.url()
    {
        bail!("the target {} is the source itself", b.url());
    }

    // Refuse a target that holds data of its own.
    if !target.store().list_accounts().await?.is_empty() {
        bail!(
            "the target {} already holds accounts; migrate only into an empty store",
            target.describe()
        );
    }
    let meta = source.export_meta().await?;
    for (key, value) in &meta {
        if let Some(existing) = target.store().get_meta(key).await?
            && key == "pepper_check"
            && &existing != value
        {
            bail!(
                "the target {} belongs to an installation with another pepper",
                target.describe()
            );
        }
    }

    eprintln!(
        "coffer migrate: copying {} to {} (nothing is decrypted)",
        source.describe(),
        target.describe()
    );
    let accounts = source.store().list_accounts().await?;
    let mut exports = Vec::with_capacity(accounts.len());
    for a in &accounts {
        exports.push(source.export_user(&a.user_id).await?);
    }
    let total_messages: usize = exports.iter().map(|e| e.messages.len()).sum();
    let mut progress = Progress::new(accounts.len(), total_messages);
    let mut copied_blobs: HashSet<BlobId> = HashSet::new();
    let mut blob_bytes = 0u64;
    for export in exports {
        let user = export.account.user_id;
        // Blobs first: a row must never point at a blob the target lacks.
        for m in &export.messages {
            if copied_blobs.insert(m.blob_id) {
                let data = source.store().get_blob(&user, &m.blob_id).await?;
                if data.len() as u64 != m.blob_len {
                    bail!(
                        "blob {} of message {}/{} has {} bytes, {} recorded; run `coffer check` on the source",
                        m.blob_id.to_hex(),
                        m.mailbox,
                        m.uid.get(),
                        data.len(),
                        m.blob_len
                    );
                }
                blob_bytes += data.len() as u64;
                target.store().put_blob(&user, &m.blob_id, data).await?;
            }
            progress.message();
        }
        target
            .import_user(export)
            .await
            .with_context(|| format!("copying the rows of account {user}"))?;
        progress.user();
    }
    // Installation values last (pepper check, last UIDVALIDITY): a target with them set
    // but rows missing would look like a finished installation.
    for (key, value) in &meta {
        if key == "last_uidvalidity"
            && let Some(existing) = target.store().get_meta(key).await?
            && existing.as_slice() > value.as_slice()
        {
            continue;
        }
        target.store().set_meta(key, value).await?;
    }
    progress.finish();
    let problems = target.store().check().await?;
    if !problems.is_empty() {
        bail!(
            "the copy fails its integrity check: {}",
            problems.join("; ")
        );
    }
    eprintln!(
        "coffer migrate: copied {} accounts, {} messages, {} blobs ({} bytes) and {} installation values to {}.",
        accounts.len(),
        total_messages,
        copied_blobs.len(),
        blob_bytes,
        meta.len(),
        target.describe()
    );
    let next = if is_postgres_url(&args.to) {
        "set [storage] url to the target URL".to_string()
    } else {
        format!(
            "set data_dir = {:?} and an empty [storage] url",
            args.to.trim()
        )
    };
    eprintln!(
        "Next: {next} in {}, keep the same pepper file, then run `coffer check` and `coffer check --user NAME`.",
        config_path.display()
    );
    Ok(())
}

fn same_dir(a: &Path, b: &Path) -> bool {
    match (a.canonicalize(), b.canonicalize()) {
        (Ok(x), Ok(y)) => x == y,
        _ => a == b,
    }
}

/// A progress line on standard error: accounts and messages copied.
struct Progress {
    users: (usize, usize),
    messages: (usize, usize),
    last: std::time::Instant,
}

impl Progress {
    fn new(users: usize, messages: usize) -> Progress {
        let p = Progress {
            users: (0, users),
            messages: (0, messages),
            last: std::time::Instant::now(),
        };
        p.draw();
        p
    }

    fn draw(&self) {
        let (done, total) = self.messages;
        let width = 30;
        let filled = (done * width).checked_div(total).unwrap_or(width);
        eprint!(
            "\r[{}{}] {done}/{total} messages, {}/{} accounts",
            "#".repeat(filled),
            "-".repeat(width - filled),
            self.users.0,
            self.users.1
        );
        let _ = std::io::stderr().flush();
    }

    fn message(&mut self) {
        self.messages.0 += 1;
        if self.last.elapsed() >= std::time::Duration::from_millis(100) {
            self.last = std::time::Instant::now();
            self.draw();
        }
    }

    fn user(&mut self) {
        self.users.0 += 1;
        self.draw();
    }

    fn finish(&self) {
        self.draw();
        eprintln!();
    }
}
