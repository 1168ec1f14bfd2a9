//! `coffer.toml`: one file, every option documented in the file itself.
//!
//! Relative paths in the file are relative to the directory holding the file, so a
//! config can be moved with its data. First start writes [`template`] with the Argon2id
//! cost calibrated on this machine.

use anyhow::{Context, Result, bail};
use serde::Deserialize;
use std::path::{Path, PathBuf};

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Config {
    pub data_dir: PathBuf,
    pub pepper_file: PathBuf,
    pub tls: Tls,
    pub imap: Imap,
    pub lmtp: Lmtp,
    pub panel: Panel,
    pub kdf: Kdf,
    pub keys: Keys,
    #[serde(default)]
    pub recovery: Recovery,
    pub limits: Limits,
    #[serde(default)]
    pub log: Log,
    #[serde(default)]
    pub storage: Storage,
    /// Directory of the config file; paths are resolved against it.
    #[serde(skip)]
    pub base: PathBuf,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Tls {
    pub cert: PathBuf,
    pub key: PathBuf,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Imap {
    pub listen: Vec<String>,
    pub listen_tls: Vec<String>,
    pub allow_plaintext_login_on_loopback: bool,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Lmtp {
    pub listen: Vec<String>,
    #[serde(default)]
    pub socket: String,
    pub local_domains: Vec<String>,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Panel {
    pub listen: String,
    /// "closed" (the operator creates users), "open" (anyone may sign up) or "invite"
    /// (sign-up with a code from `coffer invite create`).
    #[serde(default = "default_registration")]
    pub registration: String,
    /// Offer the "new empty keyring" reset on the forgot-password page.
    #[serde(default)]
    pub allow_self_reset: bool,
}

fn default_registration() -> String {
    "closed".into()
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Kdf {
    pub profile: String,
    pub memory_kib: u32,
    pub time_cost: u32,
    pub parallelism: u32,
    pub concurrency: usize,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Keys {
    pub grace_seconds: u64,
}

#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Recovery {
    #[serde(default)]
    pub public_key: String,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Limits {
    pub max_message_bytes: u64,
    pub quota_bytes: u64,
}

/// `[storage]`: which backend holds rows and sealed blobs.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Storage {
    /// Empty: the embedded store in `data_dir`. A `postgres://` URL: that database.
    #[serde(default)]
    pub url: String,
}

impl Storage {
    pub fn postgres_url(&self) -> Option<&str> {
        let u = self.url.trim();
        (!u.is_empty()).then_some(u)
    }
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Log {
    pub level: String,
}

impl Default for Log {
    fn default() -> Self {
        Log {
            level: "info".into(),
        }
    }
}

/// The only non-calibrated profile; named so that nobody picks it by accident.
pub const INSECURE_PROFILE: &str = "insecure-fast-for-tests";
pub const CALIBRATED_PROFILE: &str = "calibrated";

impl Config {
    pub fn load(path: &Path) -> Result<Config> {
        let text = std::fs::read_to_string(path)
            .with_context(|| format!("reading config {}", path.display()))?;
        let mut cfg: Config =
            toml::from_str(&text).with_context(|| format!("parsing config {}", path.display()))?;
        cfg.base = path
            .parent()
            .map(|p| {
                if p.as_os_str().is_empty() {
                    Path::new(".")
                } else {
                    p
                }
            })
            .unwrap_or(Path::new("."))
            .to_path_buf();
        cfg.validate(path)?;
        Ok(cfg)
    }

    fn validate(&self, path: &Path) -> Result<()> {
        match self.kdf.profile.as_str() {
            CALIBRATED_PROFILE | INSECURE_PROFILE => {}
            other => bail!(
                "{}: [kdf] profile must be \"calibrated\" or \"{INSECURE_PROFILE}\", not {other:?}",
                path.display()
            ),
        }
        coffer_vault::kdf::validate(&self.kdf_params())
            .with_context(|| format!("{}: [kdf]", path.display()))?;
        if self.kdf.concurrency == 0 {
            bail!("{}: [kdf] concurrency must be at least 1", path.display());
        }
        if !matches!(
            self.panel.registration.as_str(),
            "closed" | "open" | "invite"
        ) {
            bail!(
                "{}: [panel] registration must be \"closed\", \"open\" or \"invite\"",
                path.display()
            );
        }
        if self.limits.max_message_bytes == 0 {
            bail!(
                "{}: [limits] max_message_bytes must be positive",
                path.display()
            );
        }
        if !self.recovery.public_key.trim().is_empty() {
            coffer_vault::RecoveryPublicKey::parse(&self.recovery.public_key)
                .with_context(|| format!("{}: [recovery] public_key", path.display()))?;
        }
        Ok(())
    }

    pub fn resolve(&self, p: &Path) -> PathBuf {
        if p.is_absolute() {
            p.to_path_buf()
        } else {
            self.base.join(p)
        }
    }

    pub fn data_dir(&self) -> PathBuf {
        self.resolve(&self.data_dir)
    }
    pub fn pepper_path(&self) -> PathBuf {
        self.resolve(&self.pepper_file)
    }
    pub fn cert_path(&self) -> PathBuf {
        self.resolve(&self.tls.cert)
    }
    pub fn key_path(&self) -> PathBuf {
        self.resolve(&self.tls.key)
    }

    pub fn kdf_params(&self) -> coffer_vault::KdfParams {
        if self.kdf.profile == INSECURE_PROFILE {
            return coffer_vault::kdf::INSECURE_TEST_PARAMS;
        }
        coffer_vault::KdfParams {
            memory_kib: self.kdf.memory_kib,
            time_cost: self.kdf.time_cost,
            parallelism: self.kdf.parallelism,
        }
    }
}

/// The config written at first start, every option with its explanation.
pub fn template(profile: &str, memory_kib: u32, time_cost: u32, concurrency: usize) -> String {
    format!(
        r#"# Coffer configuration. Written at first start; every option is listed here.
# Relative paths are relative to the directory of this file.

# Where mail, key slots and the SQLite database live (only ciphertext and counters).
data_dir = "coffer-data"

# The server pepper: 32 random bytes, mode 0600, kept OUTSIDE the data directory.
# Losing it loses every mailbox. Back it up separately from the data (docs/OPERATING.md).
pepper_file = "coffer.pepper"

[tls]
# PEM certificate chain and private key for IMAPS, STARTTLS and the panel.
# First start creates a self-signed pair for localhost; replace with real ones.
cert = "coffer-data/tls/cert.pem"
key = "coffer-data/tls/key.pem"

[imap]
# IMAP with STARTTLS (port 143 in production).
listen = ["127.0.0.1:1143"]
# IMAP over implicit TLS (port 993 in production).
listen_tls = ["127.0.0.1:1993"]
# Accept LOGIN/AUTHENTICATE before TLS from loopback addresses only. Never from others.
allow_plaintext_login_on_loopback = true

[lmtp]
# LMTP for the MTA (RFC 2033), TCP addresses.
listen = ["127.0.0.1:2424"]
# LMTP on a unix socket for Postfix's lmtp:unix: transport; empty disables it.
socket = ""
# Recipient domains delivered here; user+tag@domain delivers to user.
local_domains = ["localhost"]

[panel]
# The web control panel (HTTPS, with the [tls] certificate); empty disables it.
listen = "127.0.0.1:8443"
# Who creates accounts: "closed" (only the operator, `coffer user add`), "open" (anyone
# who reaches the panel may sign up) or "invite" (sign-up with a one-time code made by
# `coffer invite create`).
registration = "closed"
# Offer users who lost every secret a self-service reset (a new, empty keyring) on the
# forgot-password page. Off: whoever knows a username could reset that account and read
# all mail arriving afterwards; keep resets to `coffer user reset` unless you accept that.
allow_self_reset = false

[kdf]
# Argon2id cost for new key slots (RFC 9106). "calibrated" uses the values below, which
# `coffer init` measured on this machine (target about 250 ms per login).
# "{INSECURE_PROFILE}" is a deliberately weak cost for test suites only: never use it
# for real accounts.
profile = "{profile}"
memory_kib = {memory_kib}
time_cost = {time_cost}
parallelism = 1
# Argon2id runs allowed at once; memory used is memory_kib times this.
concurrency = {concurrency}

[keys]
# Seconds a user's keys stay in memory after their last session ends.
grace_seconds = 300

[recovery]
# The operator's offline recovery public key (age1...), set by `coffer recovery-key generate`.
# Low security mode is offered only when it is set. Its secret half never lives here.
public_key = ""

[limits]
# Largest message accepted by APPEND and delivery, in bytes.
max_message_bytes = 67108864
# Storage quota per user in bytes; 0 means no quota.
quota_bytes = 0

[storage]
# Where rows and sealed blobs live. Empty: the embedded store in data_dir (SQLite + blob
# files; one server per data directory). A PostgreSQL URL, e.g.
# "postgres://coffer@db.internal/coffer", lets several `coffer serve` nodes share one
# database (docs/SCALING.md); PostgreSQL then sees only opaque ids, counters and ciphertext.
url = ""

[log]
# Log level: error, warn, info, debug. Logs never contain passwords, keys, addresses,
# subjects or bodies at any level.
level = "info"
"#
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn template_parses_and_validates() {
        let dir = std::env::temp_dir().join(format!("coffer-cfg-{}", rand::random::<u64>()));
        std::fs::create_dir_all(&dir).unwrap();
        let path = dir.join("coffer.toml");
        std::fs::write(&path, template("calibrated", 65536, 3, 2)).unwrap();
        let cfg = Config::load(&path).unwrap();
        assert_eq!(cfg.kdf_params().time_cost, 3);
        assert_eq!(cfg.data_dir(), dir.join("coffer-data"));
        std::fs::write(&path, template("fast", 65536, 3, 2)).unwrap();
        assert!(Config::load(&path).is_err());
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
