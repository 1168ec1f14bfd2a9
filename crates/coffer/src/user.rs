//! `coffer user ...`, `coffer recovery-key generate` and `coffer check`.
//!
//! Every command works while `coffer serve` runs on the same data directory: both use
//! the same SQLite database, and the server reads slots and accounts from it on every
//! login, so a revoked app password or a changed password takes effect at once.

use crate::prompt::Secrets;
use crate::setup::Env;
use anyhow::{Context, Result, bail};
use clap::Subcommand;
use coffer_types::{SecurityMode, SlotId};
use coffer_vault::{Purpose, RecoverySecretKey, VaultError, normalize_recovery_code};
use std::io::Write;
use std::os::unix::fs::OpenOptionsExt;
use std::path::Path;
use zeroize::Zeroizing;

#[derive(Subcommand)]
pub enum UserCommand {
    /// Create a user with INBOX, Drafts, Sent, Trash, Junk and Archive.
    Add {
        name: String,
        /// high: only the user can ever open the mail. low: the operator's offline
        /// recovery key can restore it too (needs `coffer recovery-key generate`).
        #[arg(long, default_value = "high")]
        mode: SecurityMode,
        /// Read the password from standard input (one line) instead of the terminal.
        #[arg(long)]
        password_stdin: bool,
    },
    /// List users (name, security mode, keyring generation, creation date).
    List,
    /// Change a user's password. Asks for the current password or the recovery code, then
    /// the new password (with --password-stdin: one line each).
    Passwd {
        name: String,
        /// Read secrets from standard input, one per line, instead of the terminal.
        #[arg(long)]
        password_stdin: bool,
    },
    /// Delete a user and all their mail.
    Delete {
        name: String,
        /// Do not ask for confirmation.
        #[arg(long)]
        yes: bool,
    },
    /// Give a user who lost every secret a new, empty keyring with a new password. Old mail
    /// stays sealed and reopens with `coffer user reopen` if an old password turns up.
    Reset {
        name: String,
        /// Do not ask for confirmation.
        #[arg(long)]
        yes: bool,
        /// Read secrets from standard input, one per line, instead of the terminal.
        #[arg(long)]
        password_stdin: bool,
    },
    /// Reopen mail sealed before a reset: asks for the current password, then an old
    /// password, app password or recovery code. The old mailboxes reappear under Recovered/.
    Reopen {
        name: String,
        /// Read secrets from standard input, one per line, instead of the terminal.
        #[arg(long)]
        password_stdin: bool,
    },
    /// Restore a low-security user with the operator's offline recovery key; asks for a new
    /// password. No mail is re-encrypted.
    Recover {
        name: String,
        /// The secret key file written by `coffer recovery-key generate`.
        #[arg(long)]
        recovery_key: std::path::PathBuf,
        /// Read secrets from standard input, one per line, instead of the terminal.
        #[arg(long)]
        password_stdin: bool,
    },
    /// App passwords: one per device, revocable alone.
    #[command(subcommand, name = "app-password")]
    AppPassword(AppPasswordCommand),
    /// Make a new recovery code (shown once; replaces the previous one). Asks the password.
    #[command(name = "recovery-code")]
    RecoveryCode {
        name: String,
        /// Read secrets from standard input, one per line, instead of the terminal.
        #[arg(long)]
        password_stdin: bool,
    },
    /// Switch between high and low security. Asks the password.
    Mode {
        name: String,
        mode: SecurityMode,
        /// Read secrets from standard input, one per line, instead of the terminal.
        #[arg(long)]
        password_stdin: bool,
    },
}

#[derive(Subcommand)]
pub enum AppPasswordCommand {
    /// Create an app password (printed once). Asks the user's password.
    Add {
        name: String,
        /// What device it is for, e.g. "phone".
        #[arg(long)]
        label: String,
        /// Read secrets from standard input, one per line, instead of the terminal.
        #[arg(long)]
        password_stdin: bool,
    },
    /// List app passwords with id, label, creation and last use. Asks the user's password.
    List {
        name: String,
        /// Read secrets from standard input, one per line, instead of the terminal.
        #[arg(long)]
        password_stdin: bool,
    },
    /// Revoke an app password by the id `list` shows. Needs no password.
    Revoke { name: String, id: String },
}

fn date(ts: i64) -> String {
    // Civil date from days since the epoch (Howard Hinnant's algorithm), UTC.
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
        "{y:04}-{m:02}-{d:02} {:02}:{:02} UTC",
        secs / 3600,
        secs % 3600 / 60
    )
}

fn confirm(question: &str) -> Result<()> {
    eprint!("{question} [y/N] ");
    std::io::stderr().flush().ok();
    let mut answer = String::new();
    std::io::stdin()
        .read_line(&mut answer)
        .context("reading the confirmation")?;
    if !matches!(answer.trim(), "y" | "Y" | "yes") {
        bail!("not confirmed; nothing was changed");
    }
    Ok(())
}

/// Turns vault errors into messages an operator can act on.
fn explain(e: VaultError, name: &str) -> anyhow::Error {
    match e {
        VaultError::AuthFailed => anyhow::anyhow!(
            "authentication failed for user {name:?} (wrong password or no such user)"
        ),
        VaultError::NoSuchUser => anyhow::anyhow!("no such user: {name:?}"),
        other => anyhow::Error::new(other),
    }
}

pub async fn run(env: &Env, cmd: UserCommand) -> Result<()> {
    match cmd {
        UserCommand::Add {
            name,
            mode,
            password_stdin,
        } => {
            let mut s = Secrets::new(password_stdin);
            let pw = s.new_password(&format!("new password for {name}"))?;
            let session = env
                .mail
                .create_user(&name, &pw, mode)
                .await
                .map_err(|e| anyhow::anyhow!("cannot create user {name:?}: {e}"))?;
            drop(session);
            println!("Created user {name} in {mode} security mode.");
            if mode == SecurityMode::High {
                println!("Tip: give them a recovery code now: coffer user recovery-code {name}");
            }
        }
        UserCommand::List => {
            let users = env.vault.list_users().await?;
            if users.is_empty() {
                println!("No users yet. Add one with: coffer user add NAME");
            }
            for u in users {
                let name = u
                    .name
                    .unwrap_or_else(|| format!("<damaged name, id {}>", u.user_id));
                println!(
                    "{name}\t{}\tgeneration {}\tcreated {}",
                    u.mode,
                    u.generation,
                    date(u.created)
                );
            }
        }
        UserCommand::Passwd {
            name,
            password_stdin,
        } => {
            let mut s = Secrets::new(password_stdin);
            let current = s.existing(&format!("current password or recovery code of {name}"))?;
            let typed = normalize_recovery_code(&current).unwrap_or(current);
            let session = env
                .vault
                .login(&name, &typed, Purpose::Recovery)
                .await
                .map_err(|e| explain(e, &name))?;
            let new = s.new_password(&format!("new password for {name}"))?;
            env.vault
                .change_password(&session, &new)
                .await
                .map_err(|e| explain(e, &name))?;
            println!("Password of {name} changed. No mail was re-encrypted.");
        }
        UserCommand::Delete { name, yes } => {
            env.vault
                .find_user(&name)
                .await
                .map_err(|e| explain(e, &name))?;
            if !yes {
                confirm(&format!("Delete user {name} and ALL their mail?"))?;
            }
            env.vault.delete_user(&name).await?;
            println!("Deleted user {name}.");
        }
        UserCommand::Reset {
            name,
            yes,
            password_stdin,
        } => {
            env.vault
                .find_user(&name)
                .await
                .map_err(|e| explain(e, &name))?;
            if !yes {
                confirm(&format!(
                    "Reset {name}? They get a new, empty keyring; old mail stays sealed until an old password is found."
                ))?;
            }
            let mut s = Secrets::new(password_stdin);
            let new = s.new_password(&format!("new password for {name}"))?;
            let session = env
                .mail
                .reset_user(&name, &new)
                .await
                .map_err(|e| anyhow::anyhow!("cannot reset {name:?}: {e}"))?;
            drop(session);
            println!(
                "Reset {name}: new keyring with fresh mailboxes. Old mail kept sealed; reopen it with: coffer user reopen {name}"
            );
        }
        UserCommand::Reopen {
            name,
            password_stdin,
        } => {
            let mut s = Secrets::new(password_stdin);
            let current = s.existing(&format!("current password of {name}"))?;
            let session = env
                .vault
                .login(&name, &current, Purpose::Account)
                .await
                .map_err(|e| explain(e, &name))?;
            let old = s.existing("old password, app password or recovery code")?;
            let old = normalize_recovery_code(&old).unwrap_or(old);
            let moved = env
                .mail
                .reopen_old_mail(&session, &old)
                .await
                .map_err(|e| anyhow::anyhow!("cannot reopen: {e}"))?;
            println!(
                "Reopened the old keyring of {name}: {} mailboxes are back under Recovered/.",
                moved.len()
            );
        }
        UserCommand::Recover {
            name,
            recovery_key,
            password_stdin,
        } => {
            let text = Zeroizing::new(
                std::fs::read(&recovery_key)
                    .with_context(|| format!("reading recovery key {}", recovery_key.display()))?,
            );
            let key = RecoverySecretKey::parse_file_text(&text)
                .with_context(|| format!("recovery key {}", recovery_key.display()))?;
            env.vault
                .find_user(&name)
                .await
                .map_err(|e| explain(e, &name))?;
            let mut s = Secrets::new(password_stdin);
            let new = s.new_password(&format!("new password for {name}"))?;
            env.vault
                .recover(&name, &key, &new)
                .await
                .map_err(|e| explain(e, &name))?;
            println!(
                "Recovered {name} with the operator recovery key; new password set, all mail kept."
            );
        }
        UserCommand::AppPassword(cmd) => app_password(env, cmd).await?,
        UserCommand::RecoveryCode {
            name,
            password_stdin,
        } => {
            let mut s = Secrets::new(password_stdin);
            let pw = s.existing(&format!("password of {name}"))?;
            let session = env
                .vault
                .login(&name, &pw, Purpose::Account)
                .await
                .map_err(|e| explain(e, &name))?;
            let code = env.vault.set_recovery_code(&session).await?;
            println!(
                "Recovery code for {name} (shown once; any previous code no longer works):\n\n    {}\n",
                code.to_uppercase()
            );
        }
        UserCommand::Mode {
            name,
            mode,
            password_stdin,
        } => {
            let mut s = Secrets::new(password_stdin);
            let pw = s.existing(&format!("password of {name}"))?;
            let session = env
                .vault
                .login(&name, &pw, Purpose::Account)
                .await
                .map_err(|e| explain(e, &name))?;
            env.vault
                .set_mode(&session, mode)
                .await
                .map_err(|e| explain(e, &name))?;
            match mode {
                SecurityMode::Low => println!(
                    "{name} is now in low security mode: the operator's offline recovery key can restore the mail."
                ),
                SecurityMode::High => println!(
                    "{name} is now in high security mode: the escrow slot is deleted (backups taken earlier still hold it)."
                ),
            }
        }
    }
    Ok(())
}

async fn app_password(env: &Env, cmd: AppPasswordCommand) -> Result<()> {
    match cmd {
        AppPasswordCommand::Add {
            name,
            label,
            password_stdin,
        } => {
            let mut s = Secrets::new(password_stdin);
            let pw = s.existing(&format!("password of {name}"))?;
            let session = env
                .vault
                .login(&name, &pw, Purpose::Account)
                .await
                .map_err(|e| explain(e, &name))?;
            let (id, secret) = env
                .vault
                .add_app_password(&session, &label)
                .await
                .map_err(|e| explain(e, &name))?;
            println!(
                "App password for {name} ({label}), id {id}. Shown once:\n\n    {}\n",
                &*secret
            );
        }
        AppPasswordCommand::List {
            name,
            password_stdin,
        } => {
            let mut s = Secrets::new(password_stdin);
            let pw = s.existing(&format!("password of {name}"))?;
            let session = env
                .vault
                .login(&name, &pw, Purpose::Account)
                .await
                .map_err(|e| explain(e, &name))?;
            let list = env.vault.list_app_passwords(&session).await?;
            if list.is_empty() {
                println!("{name} has no app passwords.");
            }
            for a in list {
                let used = a
                    .last_used
                    .map(|t| format!("last used {}", date(t)))
                    .unwrap_or_else(|| "never used".into());
                println!(
                    "{}\t{}\tcreated {}\t{}",
                    a.slot_id,
                    a.label,
                    date(a.created),
                    used
                );
            }
        }
        AppPasswordCommand::Revoke { name, id } => {
            let slot = SlotId::from_hex(&id).with_context(|| {
                format!("{id:?} is not an app password id (32 hex digits, see `list`)")
            })?;
            let user = env
                .vault
                .find_user(&name)
                .await
                .map_err(|e| explain(e, &name))?;
            if !env.vault.revoke_app_password(&user.user_id, &slot).await? {
                bail!("{name} has no app password with id {id}");
            }
            println!(
                "Revoked app password {id} of {name}; it stops working for new logins at once."
            );
        }
    }
    Ok(())
}

pub fn generate_recovery_key(env: &Env, out: &Path) -> Result<()> {
    if !env.cfg.recovery.public_key.trim().is_empty() {
        bail!(
            "{} already names a recovery public key; remove it first if you really mean to replace it (existing escrow slots stay sealed to the old key)",
            env.config_path.display()
        );
    }
    let generated = coffer_vault::recovery::generate();
    let mut f = std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o600)
        .open(out)
        .with_context(|| format!("creating {} (it must not exist yet)", out.display()))?;
    f.write_all(generated.secret_file_text.as_bytes())
        .and_then(|_| f.sync_all())
        .with_context(|| format!("writing {}", out.display()))?;
    let text = std::fs::read_to_string(&env.config_path)
        .with_context(|| format!("reading {}", env.config_path.display()))?;
    let mut doc: toml_edit::DocumentMut = text
        .parse()
        .with_context(|| format!("parsing {}", env.config_path.display()))?;
    if doc.get("recovery").is_none() {
        doc["recovery"] = toml_edit::table();
    }
    doc["recovery"]["public_key"] = toml_edit::value(generated.public.clone());
    std::fs::write(&env.config_path, doc.to_string())
        .with_context(|| format!("writing {}", env.config_path.display()))?;
    println!(
        "Recovery key pair generated.\n  secret key: {} (mode 0600) -- move it OFFLINE now; it opens every low-security mailbox.\n  public key: {} (written to {} [recovery] public_key)\nRestart `coffer serve` to offer low security mode.",
        out.display(),
        generated.public,
        env.config_path.display()
    );
    Ok(())
}

pub async fn check(env: &Env, user: Option<&str>, password_stdin: bool) -> Result<()> {
    eprintln!("Checking the store in {} ...", env.cfg.data_dir().display());
    let mut problems = env.store.check().await?;
    let users = env.vault.list_users().await?;
    for u in &users {
        if u.name.is_none() {
            problems.push(format!(
                "account {}: sealed username failed authentication",
                u.user_id
            ));
        }
    }
    eprintln!("  {} accounts, database and blobs checked", users.len());
    if let Some(name) = user {
        let mut s = Secrets::new(password_stdin);
        let pw = s.existing(&format!("password of {name}"))?;
        let session = env
            .vault
            .login(name, &pw, Purpose::Account)
            .await
            .map_err(|e| explain(e, name))?;
        let (n, user_problems) = env.mail.check_user(&session).await?;
        eprintln!("  {n} messages of {name} opened and verified");
        problems.extend(user_problems);
    }
    if problems.is_empty() {
        println!("check: OK");
        Ok(())
    } else {
        for p in &problems {
            println!("problem: {p}");
        }
        bail!("check found {} problems", problems.len())
    }
}

#[cfg(test)]
mod tests {
    #[test]
    fn dates_are_civil_utc() {
        assert_eq!(super::date(0), "1970-01-01 00:00 UTC");
        assert_eq!(super::date(1_700_000_000), "2023-11-14 22:13 UTC");
    }
}
