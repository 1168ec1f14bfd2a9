//! Invitation codes for panel sign-up when `[panel] registration = "invite"`: made by the
//! operator with `coffer invite create`, each usable once. Only a keyed hash of each code is
//! stored (in the store's meta table), so a copy of the store holds no usable code.

use crate::{MailError, Result};
use coffer_store::Store;
use coffer_vault::Pepper;
use rand::Rng;

const UNUSED: &[u8] = b"unused";
const USED: &[u8] = b"used";

fn key(pepper: &Pepper, code: &str) -> String {
    format!(
        "invite:{}",
        coffer_types::hex(&pepper.invite_id(code.trim()))
    )
}

/// Makes a new code (20 symbols, 100 bits) and records it as unused.
pub async fn create(store: &dyn Store, pepper: &Pepper) -> Result<String> {
    const ALPHABET: &[u8; 32] = b"abcdefghijkmnpqrstuvwxyz23456789";
    let mut rng = rand::rngs::OsRng;
    let code: String = (0..20)
        .map(|i| {
            let c = ALPHABET[rng.gen_range(0..32)] as char;
            if i > 0 && i % 5 == 0 {
                format!("-{c}")
            } else {
                c.to_string()
            }
        })
        .collect();
    store.set_meta(&key(pepper, &code), UNUSED).await?;
    Ok(code)
}

/// True if `code` exists and was not used.
pub async fn is_valid(store: &dyn Store, pepper: &Pepper, code: &str) -> Result<bool> {
    Ok(store.get_meta(&key(pepper, code)).await?.as_deref() == Some(UNUSED))
}

/// Marks a code used (after the account it admitted was created).
pub async fn consume(store: &dyn Store, pepper: &Pepper, code: &str) -> Result<()> {
    if !is_valid(store, pepper, code).await? {
        return Err(MailError::NotAllowed("invitation code is unknown or used"));
    }
    store.set_meta(&key(pepper, code), USED).await?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test(flavor = "multi_thread")]
    async fn codes_work_once_and_are_not_stored_in_the_clear() {
        let dir = std::env::temp_dir().join(format!("coffer-invite-{}", rand::random::<u64>()));
        std::fs::create_dir_all(&dir).unwrap();
        let store = coffer_store::sqlite::SqliteStore::open(&dir).unwrap();
        let pepper = Pepper::from_bytes([3; 32]);
        let code = create(&store, &pepper).await.unwrap();
        assert_eq!(code.len(), 23);
        assert!(is_valid(&store, &pepper, &code).await.unwrap());
        assert!(!is_valid(&store, &pepper, "nope").await.unwrap());
        assert!(
            store
                .get_meta(&format!("invite:{code}"))
                .await
                .unwrap()
                .is_none()
        );
        consume(&store, &pepper, &code).await.unwrap();
        assert!(!is_valid(&store, &pepper, &code).await.unwrap());
        assert!(
            consume(&store, &pepper, &code).await.is_err(),
            "used once only"
        );
        let _ = std::fs::remove_dir_all(&dir);
    }
}
