//! Shared setup for the mailbox model's tests: an embedded store in a fresh temporary
//! directory, a vault with the test-only fast KDF, and the mail model over them.
#![allow(dead_code)]

use coffer_mail::Mail;
use coffer_store::sqlite::SqliteStore;
use coffer_vault::{Pepper, Vault, VaultConfig};
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

pub struct Setup {
    pub dir: PathBuf,
    pub store: SqliteStore,
    pub mail: Mail,
}

impl Drop for Setup {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

pub fn setup() -> Setup {
    let dir = std::env::temp_dir().join(format!("coffer-mail-test-{}", rand::random::<u64>()));
    std::fs::create_dir_all(&dir).unwrap();
    let store = SqliteStore::open(&dir).unwrap();
    let vault = Arc::new(Vault::new(
        Arc::new(store.clone()),
        Arc::new(Pepper::from_bytes(rand::random())),
        VaultConfig {
            kdf: coffer_vault::kdf::INSECURE_TEST_PARAMS,
            argon2_concurrency: 2,
            grace: Duration::ZERO,
            recovery_key: None,
        },
    ));
    Setup {
        dir,
        store,
        mail: Mail::new(vault),
    }
}
