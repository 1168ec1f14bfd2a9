//! Account and key slot operations: create, log in, change password, app passwords,
//! recovery code, security mode, reset, reopen after reset, escrow recovery, delete.
//!
//! Login follows CRYPTO.md exactly: one Argon2id run keyed with the pepper, HKDF to a slot
//! locator and a key-encryption key, one indexed slot lookup, one AEAD open. Unknown users
//! run a dummy Argon2id so that they fail like a wrong password, in about the same time.

use crate::error::VaultError;
use crate::kdf::{self, KdfParams};
use crate::keyring::{GenerationKeys, Keyring, Place};
use crate::pepper::Pepper;
use crate::primitives::{self, Aad, hkdf32};
use crate::recovery::{RecoveryPublicKey, RecoverySecretKey};
use crate::registry::{Registry, Unlocked};
use crate::secret::{Password, Secret32};
use coffer_store::{
    AccountRow, KeyringLinkRow, KeyringRow, NewAccount, NewMailbox, SlotRow, Store, StoreError,
};
use coffer_types::{Generation, SecurityMode, SlotId, SlotKind, UserId, Username};
use rand::Rng;
use std::io::{Read, Write};
use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};
use tokio::sync::Semaphore;
use zeroize::Zeroizing;

/// Which secrets a login accepts.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Purpose {
    /// IMAP (and later delivery-side tools): the password or an app password.
    Mail,
    /// The control panel and account changes: the account password only.
    Account,
    /// Changing a forgotten password: the password or the recovery code.
    Recovery,
}

impl Purpose {
    fn accepts(self, kind: SlotKind) -> bool {
        matches!(
            (self, kind),
            (Purpose::Mail, SlotKind::Password | SlotKind::AppPassword)
                | (Purpose::Account, SlotKind::Password)
                | (
                    Purpose::Recovery,
                    SlotKind::Password | SlotKind::RecoveryCode
                )
        )
    }
}

/// Settings of the vault, from the config file.
#[derive(Clone)]
pub struct VaultConfig {
    /// Argon2id cost for new slots (calibrated by `coffer init`).
    pub kdf: KdfParams,
    /// How many Argon2id runs may proceed at once (memory = kdf.memory_kib × this).
    pub argon2_concurrency: usize,
    /// How long a keyring stays open after its last session ends.
    pub grace: Duration,
    /// The operator's recovery public key; low security mode is offered only with it.
    pub recovery_key: Option<RecoveryPublicKey>,
}

/// One app password as listed to its owner. `Debug` hides the label.
#[derive(Clone)]
pub struct AppPasswordInfo {
    pub slot_id: SlotId,
    pub label: String,
    pub created: i64,
    pub last_used: Option<i64>,
}

/// One account as listed to the operator (pepper only, no user key). `Debug` hides the
/// name: usernames are personal data and never go to logs.
#[derive(Clone)]
pub struct UserSummary {
    pub user_id: UserId,
    /// The canonical username, or None if its sealed copy failed authentication.
    pub name: Option<String>,
    pub mode: SecurityMode,
    pub generation: Generation,
    pub created: i64,
}

impl std::fmt::Debug for AppPasswordInfo {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("AppPasswordInfo")
            .field("slot_id", &self.slot_id)
            .finish_non_exhaustive()
    }
}

impl std::fmt::Debug for UserSummary {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("UserSummary")
            .field("user_id", &self.user_id)
            .finish_non_exhaustive()
    }
}

/// Pads a short name (username, app password label) with zero bytes to a multiple of 32,
/// so its sealed length does not tell its exact length. Such names never contain NUL.
fn pad_name(name: &str) -> Zeroizing<Vec<u8>> {
    let mut v = Zeroizing::new(name.as_bytes().to_vec());
    v.resize(name.len().div_ceil(32).max(1) * 32, 0);
    v
}

fn unpad_name(padded: &[u8]) -> Option<String> {
    let end = padded.iter().position(|b| *b == 0).unwrap_or(padded.len());
    if padded[end..].iter().any(|b| *b != 0) {
        return None;
    }
    String::from_utf8(padded[..end].to_vec()).ok()
}

/// The vault. Cheap to share behind an `Arc`.
pub struct Vault {
    store: Arc<dyn Store>,
    pepper: Arc<Pepper>,
    config: VaultConfig,
    argon: Arc<Semaphore>,
    registry: Registry,
    throttle: crate::throttle::Throttle,
}

pub(crate) fn now() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_secs() as i64)
        .unwrap_or(0)
}

const CODE_ALPHABET: &[u8; 32] = b"abcdefghijkmnpqrstuvwxyz23456789";

/// A random code of `groups` groups of `len` characters from a 32-symbol alphabet
/// (5 bits each), joined by dashes.
fn random_code(groups: usize, len: usize) -> Zeroizing<String> {
    let mut rng = rand::rngs::OsRng;
    let mut out = Zeroizing::new(String::with_capacity(groups * (len + 1)));
    for g in 0..groups {
        if g > 0 {
            out.push('-');
        }
        for _ in 0..len {
            out.push(CODE_ALPHABET[rng.gen_range(0..32)] as char);
        }
    }
    out
}

/// App passwords: 16 symbols, 80 bits, `xxxx-xxxx-xxxx-xxxx`.
pub fn generate_app_password() -> Zeroizing<String> {
    random_code(4, 4)
}

/// Recovery codes: 30 symbols, 150 bits, `xxxxx-xxxxx-xxxxx-xxxxx-xxxxx-xxxxx`.
pub fn generate_recovery_code() -> Zeroizing<String> {
    random_code(6, 5)
}

/// Recovery codes are typed by people: accept any case, spaces and dashes.
pub fn normalize_recovery_code(typed: &str) -> Option<Zeroizing<String>> {
    let symbols: Zeroizing<String> = Zeroizing::new(
        typed
            .chars()
            .filter(|c| !c.is_whitespace() && *c != '-')
            .flat_map(char::to_lowercase)
            .collect(),
    );
    if symbols.chars().count() != 30 || !symbols.bytes().all(|b| CODE_ALPHABET.contains(&b)) {
        return None;
    }
    let mut out = Zeroizing::new(String::with_capacity(35));
    for (i, c) in symbols.chars().enumerate() {
        if i > 0 && i % 5 == 0 {
            out.push('-');
        }
        out.push(c);
    }
    Some(out)
}

fn slot_aad(user: &UserId, locator: &[u8; 32], kind: SlotKind, generation: Generation) -> Aad {
    Aad::new("coffer/v1/slot")
        .field(user.as_bytes())
        .field(locator)
        .u32(kind.code() as u32)
        .u32(generation.0)
}

fn link_aad(user: &UserId, old: Generation, new: Generation) -> Aad {
    Aad::new("coffer/v1/link")
        .field(user.as_bytes())
        .u32(old.0)
        .u32(new.0)
}

fn name_aad(user: &UserId) -> Aad {
    Aad::new("coffer/v1/account-name").field(user.as_bytes())
}

const ESCROW_MAGIC: &[u8] = b"coffer/escrow/v1";

/// Meta key holding the last "lock now" time of a user (nanoseconds since the epoch).
fn lock_key(user: &UserId) -> String {
    format!("lock:{}", user.to_hex())
}

impl Vault {
    pub fn new(store: Arc<dyn Store>, pepper: Arc<Pepper>, config: VaultConfig) -> Self {
        let registry = Registry::new(config.grace);
        let argon = Arc::new(Semaphore::new(config.argon2_concurrency.max(1)));
        Vault {
            store,
            pepper,
            config,
            argon,
            registry,
            throttle: crate::throttle::Throttle::default(),
        }
    }

    pub fn store(&self) -> &Arc<dyn Store> {
        &self.store
    }
    pub fn pepper(&self) -> &Pepper {
        &self.pepper
    }
    pub fn registry(&self) -> &Registry {
        &self.registry
    }

    /// The failed-login throttle every front end (IMAP, panel) of this process shares.
    pub fn throttle(&self) -> &crate::throttle::Throttle {
        &self.throttle
    }
    pub fn config(&self) -> &VaultConfig {
        &self.config
    }

    pub fn user_id(&self, name: &str) -> Result<UserId, VaultError> {
        Ok(self.pepper.user_id(&Username::new(name)?))
    }

    /// Argon2id on a blocking thread, bounded by the semaphore.
    async fn stretch(
        &self,
        secret: &[u8],
        salt: [u8; 16],
        params: KdfParams,
    ) -> Result<Secret32, VaultError> {
        let _permit = self
            .argon
            .acquire()
            .await
            .map_err(|_| VaultError::Internal("argon2 semaphore closed".into()))?;
        let pepper = self.pepper.clone();
        let secret = Zeroizing::new(secret.to_vec());
        tokio::task::spawn_blocking(move || kdf::stretch(&pepper, &secret, &salt, &params))
            .await
            .map_err(|e| VaultError::Internal(format!("argon2 task failed: {e}")))?
            .map_err(VaultError::from)
    }

    /// A slot for `secret` wrapping `keys`' master key, stretched with the current cost.
    async fn make_slot(
        &self,
        user: &UserId,
        salt: [u8; 16],
        secret: &[u8],
        kind: SlotKind,
        keys: &GenerationKeys,
        sealed_label: Option<Vec<u8>>,
    ) -> Result<SlotRow, VaultError> {
        let params = self.config.kdf;
        let s = self.stretch(secret, salt, params).await?;
        let sk = kdf::slot_keys(&s);
        let wrapped = primitives::seal(
            &sk.kek,
            &slot_aad(user, &sk.locator, kind, keys.generation()),
            keys.master().expose(),
        );
        Ok(SlotRow {
            user_id: *user,
            slot_id: SlotId(rand::random()),
            kind,
            generation: keys.generation(),
            locator: Some(sk.locator),
            kdf: Some(params),
            wrapped,
            sealed_label,
            created: now(),
            last_used: None,
        })
    }

    fn escrow_slot(&self, user: &UserId, keys: &GenerationKeys) -> Result<SlotRow, VaultError> {
        let recipient = self
            .config
            .recovery_key
            .as_ref()
            .ok_or(VaultError::NoRecoveryKey)?;
        let mut payload = Zeroizing::new(Vec::with_capacity(ESCROW_MAGIC.len() + 68));
        payload.extend_from_slice(ESCROW_MAGIC);
        payload.extend_from_slice(user.as_bytes());
        payload.extend_from_slice(&keys.generation().0.to_be_bytes());
        payload.extend_from_slice(keys.master().expose());
        let enc =
            age::Encryptor::with_recipients(std::iter::once(&recipient.0 as &dyn age::Recipient))
                .map_err(|e| VaultError::Internal(format!("escrow: {e}")))?;
        let mut wrapped = Vec::new();
        let mut w = enc
            .wrap_output(&mut wrapped)
            .map_err(|e| VaultError::Internal(format!("escrow: {e}")))?;
        w.write_all(&payload)
            .and_then(|_| w.finish().map(|_| ()))
            .map_err(|e| VaultError::Internal(format!("escrow: {e}")))?;
        Ok(SlotRow {
            user_id: *user,
            slot_id: SlotId(rand::random()),
            kind: SlotKind::Escrow,
            generation: keys.generation(),
            locator: None,
            kdf: None,
            wrapped,
            sealed_label: None,
            created: now(),
            last_used: None,
        })
    }

    /// Checks a derived keyring against the stored public key of its generation.
    async fn verify_generation(
        &self,
        user: &UserId,
        keys: &GenerationKeys,
    ) -> Result<(), VaultError> {
        let rows = self.store.list_keyrings(user).await?;
        let row = rows
            .iter()
            .find(|r| r.generation == keys.generation())
            .ok_or_else(|| {
                VaultError::Tampered(format!(
                    "keyring {} of user {user} is missing",
                    keys.generation()
                ))
            })?;
        if &row.public_key != keys.public_key().as_bytes() {
            return Err(VaultError::Tampered(format!(
                "keyring {} of user {user}: public key does not match the master key",
                keys.generation()
            )));
        }
        Ok(())
    }

    /// Adds to `ring` every older generation reachable through stored links.
    async fn open_links(&self, ring: &mut Keyring) -> Result<(), VaultError> {
        let links = self.store.list_links(ring.user_id()).await?;
        loop {
            let opened = open_links_once(ring, &links)?;
            if opened.is_empty() {
                return Ok(());
            }
            for keys in opened {
                self.verify_generation(ring.user_id(), &keys).await?;
                ring.add_old(keys);
            }
        }
    }

    async fn unlock_from_master(
        &self,
        user: UserId,
        generation: Generation,
        master: Secret32,
        opened_with: SlotKind,
    ) -> Result<Unlocked, VaultError> {
        let keys = GenerationKeys::derive(generation, master);
        self.verify_generation(&user, &keys).await?;
        let mut ring = Keyring::new(user, keys);
        self.open_links(&mut ring).await?;
        Ok(self.registry.open(ring, opened_with))
    }

    fn open_slot(&self, slot: &SlotRow, kek: &Secret32) -> Result<Secret32, VaultError> {
        let locator = slot
            .locator
            .ok_or_else(|| VaultError::Tampered(format!("slot {}", slot.slot_id)))?;
        let mk = primitives::open(
            kek,
            &slot_aad(&slot.user_id, &locator, slot.kind, slot.generation),
            &slot.wrapped,
        )
        .map_err(|_| VaultError::Tampered(format!("key slot {}", slot.slot_id)))?;
        let bytes: [u8; 32] = mk
            .as_slice()
            .try_into()
            .map_err(|_| VaultError::Tampered(format!("key slot {}", slot.slot_id)))?;
        Ok(Secret32::new(bytes))
    }

    /// Finds the slot a typed secret opens, running Argon2id once per distinct cost in use
    /// (normally once). Unknown users run one dummy derivation and find nothing.
    async fn find_slot_for(
        &self,
        account: Option<&AccountRow>,
        user: &UserId,
        secret: &[u8],
    ) -> Result<Option<(SlotRow, Secret32)>, VaultError> {
        let Some(account) = account else {
            let _ = self
                .stretch(secret, rand::random(), self.config.kdf)
                .await?;
            return Ok(None);
        };
        let mut costs: Vec<KdfParams> = Vec::new();
        for s in self.store.list_slots(user).await? {
            if let Some(k) = s.kdf
                && !costs.contains(&k)
            {
                costs.push(k);
            }
        }
        if costs.is_empty() {
            costs.push(self.config.kdf);
        }
        // The current cost first: after a cost upgrade most slots use it.
        costs.sort_by_key(|k| *k != self.config.kdf);
        for params in costs {
            let s = self.stretch(secret, account.kdf_salt, params).await?;
            let sk = kdf::slot_keys(&s);
            if let Some(slot) = self.store.find_slot(user, &sk.locator).await? {
                return Ok(Some((slot, sk.kek)));
            }
        }
        Ok(None)
    }

    /// Logs in with a username and a typed secret, opening (or joining) the keyring.
    pub async fn login(
        &self,
        name: &str,
        secret: &str,
        purpose: Purpose,
    ) -> Result<Unlocked, VaultError> {
        let username = Username::new(name)?;
        let password = Password::new(secret)?;
        let user = self.pepper.user_id(&username);
        let secret = password.expose().as_bytes();

        if let Some(session) = self.fast_login(&user, secret, purpose).await? {
            return Ok(session);
        }

        let account = self.store.get_account(&user).await?;
        let Some((slot, kek)) = self.find_slot_for(account.as_ref(), &user, secret).await? else {
            return Err(VaultError::AuthFailed);
        };
        let account = account.ok_or(VaultError::AuthFailed)?;
        if slot.generation != account.generation {
            // A secret from before a reset opens only the old keyring: see `reopen`.
            return Err(VaultError::AuthFailed);
        }
        if !purpose.accepts(slot.kind) {
            return Err(VaultError::KindNotAccepted(slot.kind));
        }
        let master = self.open_slot(&slot, &kek)?;
        let keys = GenerationKeys::derive(slot.generation, master.clone());
        let session = self
            .unlock_from_master(user, slot.generation, master, slot.kind)
            .await?;
        let locator = match self.upgrade_slot_cost(&account, &slot, secret, &keys).await {
            Ok(Some(upgraded)) => Some(upgraded),
            // Best effort: the old slot still works, and the next login tries again.
            Ok(None) | Err(_) => slot.locator,
        };
        if let Some(locator) = locator {
            self.registry.remember(&user, secret, locator, slot.kind);
        }
        let _ = self.store.touch_slot(&user, &slot.slot_id, now()).await;
        Ok(session)
    }

    /// Re-wraps a slot made with an older Argon2id cost at the current one, keeping its id
    /// and label, so that after a cost change accounts converge on one cost and a wrong
    /// password costs the same as an unknown user again. Returns the new locator.
    async fn upgrade_slot_cost(
        &self,
        account: &AccountRow,
        slot: &SlotRow,
        secret: &[u8],
        keys: &GenerationKeys,
    ) -> Result<Option<[u8; 32]>, VaultError> {
        if slot.kdf == Some(self.config.kdf) || slot.locator.is_none() {
            return Ok(None);
        }
        let mut upgraded = self
            .make_slot(
                &account.user_id,
                account.kdf_salt,
                secret,
                slot.kind,
                keys,
                slot.sealed_label.clone(),
            )
            .await?;
        upgraded.slot_id = slot.slot_id;
        upgraded.created = slot.created;
        let locator = upgraded.locator;
        self.store
            .replace_slots(&account.user_id, vec![upgraded], vec![slot.slot_id])
            .await?;
        Ok(locator)
    }

    /// Re-login while unlocked: a keyed hash held only in memory replaces Argon2id. The
    /// slot must still exist and belong to the current generation, so a password changed
    /// or an app password revoked (even by another process) stops working at once.
    async fn fast_login(
        &self,
        user: &UserId,
        secret: &[u8],
        purpose: Purpose,
    ) -> Result<Option<Unlocked>, VaultError> {
        let Some((locator, kind, generation)) = self.registry.recall(user, secret) else {
            return Ok(None);
        };
        if !purpose.accepts(kind) {
            return Ok(None);
        }
        let account = self.store.get_account(user).await?;
        let slot = self
            .store
            .find_slot(user, &locator)
            .await?
            .filter(|s| s.generation == generation && s.kind == kind);
        let current = account.is_some_and(|a| a.generation == generation);
        let (true, Some(slot)) = (current, slot) else {
            self.registry.forget_secrets(user);
            return Ok(None);
        };
        let session = self.registry.join_existing(user, kind);
        if session.is_some() {
            // Last-use bookkeeping is best effort and off the login's critical path.
            let store = self.store.clone();
            let user = *user;
            tokio::spawn(async move {
                let _ = store.touch_slot(&user, &slot.slot_id, now()).await;
            });
        }
        Ok(session)
    }

    /// Creates an account with a password slot, an escrow slot in low mode, and the
    /// mailboxes `mailboxes` builds with the new keyring. Returns an open session.
    pub async fn create_user<F>(
        &self,
        name: &str,
        password: &str,
        mode: SecurityMode,
        mailboxes: F,
    ) -> Result<Unlocked, VaultError>
    where
        F: FnOnce(&Keyring, &Pepper) -> Vec<NewMailbox>,
    {
        let username = Username::new(name)?;
        let password = Password::new_account_password(password)?;
        if mode == SecurityMode::Low && self.config.recovery_key.is_none() {
            return Err(VaultError::NoRecoveryKey);
        }
        let user = self.pepper.user_id(&username);
        if self.store.get_account(&user).await?.is_some() {
            return Err(VaultError::UserExists);
        }
        let generation = Generation(1);
        let keys = GenerationKeys::derive(generation, Secret32::random());
        let salt: [u8; 16] = rand::random();
        let mut slots = vec![
            self.make_slot(
                &user,
                salt,
                password.expose().as_bytes(),
                SlotKind::Password,
                &keys,
                None,
            )
            .await?,
        ];
        if mode == SecurityMode::Low {
            slots.push(self.escrow_slot(&user, &keys)?);
        }
        let public_key = *keys.public_key().as_bytes();
        let sealed_name = primitives::seal(
            self.pepper.directory_key(),
            &name_aad(&user),
            &pad_name(username.as_str()),
        );
        let ring = Keyring::new(user, keys);
        let boxes = mailboxes(&ring, &self.pepper);
        let created = now();
        let result = self
            .store
            .create_account(NewAccount {
                account: AccountRow {
                    user_id: user,
                    sealed_name,
                    generation,
                    mode,
                    kdf_salt: salt,
                    inbox: None,
                    created,
                },
                keyring: KeyringRow {
                    user_id: user,
                    generation,
                    public_key,
                    created,
                },
                slots,
                mailboxes: boxes,
            })
            .await;
        match result {
            Ok(_) => {}
            Err(StoreError::Conflict(_)) => return Err(VaultError::UserExists),
            Err(e) => return Err(e.into()),
        }
        Ok(self.registry.open(ring, SlotKind::Password))
    }

    async fn account(&self, user: &UserId) -> Result<AccountRow, VaultError> {
        self.store
            .get_account(user)
            .await?
            .ok_or(VaultError::NoSuchUser)
    }

    /// The account and the session's keys of its current generation. If the account moved
    /// on (a reset, possibly by another process), the session is stale: its keyring is
    /// wiped here and the caller gets `Locked`, so old keys are never written under the
    /// new generation.
    async fn current_keys(
        &self,
        session: &Unlocked,
    ) -> Result<(AccountRow, GenerationKeys), VaultError> {
        let account = self.account(session.user_id()).await?;
        let (generation, master) =
            session.with(|k| (k.current_generation(), k.current().master().clone()))?;
        if generation != account.generation {
            self.registry.lock(session.user_id());
            return Err(crate::registry::Locked.into());
        }
        Ok((account, GenerationKeys::derive(generation, master)))
    }

    /// Replaces the password slot of the current generation. Allowed for sessions opened
    /// with the password or the recovery code (which is then used up). No mail is touched.
    pub async fn change_password(
        &self,
        session: &Unlocked,
        new_password: &str,
    ) -> Result<(), VaultError> {
        if !matches!(
            session.opened_with(),
            SlotKind::Password | SlotKind::RecoveryCode
        ) {
            return Err(VaultError::NotAllowed(
                "only the account password or the recovery code can change the password",
            ));
        }
        let new_password = Password::new_account_password(new_password)?;
        let user = *session.user_id();
        let (account, keys) = self.current_keys(session).await?;
        let slot = self
            .make_slot(
                &user,
                account.kdf_salt,
                new_password.expose().as_bytes(),
                SlotKind::Password,
                &keys,
                None,
            )
            .await?;
        let remove: Vec<SlotId> = self
            .store
            .list_slots(&user)
            .await?
            .into_iter()
            .filter(|s| {
                s.generation == account.generation
                    && (s.kind == SlotKind::Password
                        || (s.kind == SlotKind::RecoveryCode
                            && session.opened_with() == SlotKind::RecoveryCode))
            })
            .map(|s| s.slot_id)
            .collect();
        match self.store.replace_slots(&user, vec![slot], remove).await {
            Ok(()) => {}
            Err(StoreError::Conflict(_)) => return Err(VaultError::SecretInUse),
            Err(e) => return Err(e.into()),
        }
        self.registry.forget_secrets(&user);
        Ok(())
    }

    /// Creates an app password with a label; returns its id and the password (shown once).
    pub async fn add_app_password(
        &self,
        session: &Unlocked,
        label: &str,
    ) -> Result<(SlotId, Zeroizing<String>), VaultError> {
        if session.opened_with() == SlotKind::AppPassword {
            return Err(VaultError::NotAllowed(
                "an app password cannot create another one",
            ));
        }
        let label = label.trim();
        if label.is_empty() || label.len() > 100 || label.chars().any(char::is_control) {
            return Err(VaultError::NotAllowed(
                "an app password label must be 1 to 100 printable characters",
            ));
        }
        let user = *session.user_id();
        let (account, keys) = self.current_keys(session).await?;
        let secret = generate_app_password();
        let slot_id = SlotId(rand::random());
        let (_, sealed_label) =
            session.with(|k| k.seal(Place::SlotLabel(slot_id.as_bytes()), &pad_name(label)))?;
        let mut slot = self
            .make_slot(
                &user,
                account.kdf_salt,
                secret.as_bytes(),
                SlotKind::AppPassword,
                &keys,
                Some(sealed_label),
            )
            .await?;
        slot.slot_id = slot_id;
        self.store.replace_slots(&user, vec![slot], vec![]).await?;
        Ok((slot_id, secret))
    }

    /// App passwords of the current generation with their labels.
    pub async fn list_app_passwords(
        &self,
        session: &Unlocked,
    ) -> Result<Vec<AppPasswordInfo>, VaultError> {
        let user = *session.user_id();
        let account = self.account(&user).await?;
        let slots = self.store.list_slots(&user).await?;
        let mut out = Vec::new();
        for s in slots
            .into_iter()
            .filter(|s| s.kind == SlotKind::AppPassword && s.generation == account.generation)
        {
            let label = match &s.sealed_label {
                Some(sealed) => {
                    let plain = session.with(|k| {
                        k.open(s.generation, Place::SlotLabel(s.slot_id.as_bytes()), sealed)
                    })??;
                    unpad_name(&plain).ok_or_else(|| {
                        VaultError::Tampered(format!("label of slot {}", s.slot_id))
                    })?
                }
                None => String::new(),
            };
            out.push(AppPasswordInfo {
                slot_id: s.slot_id,
                label,
                created: s.created,
                last_used: s.last_used,
            });
        }
        Ok(out)
    }

    /// Revokes an app password. Needs no key: removing a slot only takes access away.
    pub async fn revoke_app_password(
        &self,
        user: &UserId,
        slot_id: &SlotId,
    ) -> Result<bool, VaultError> {
        let slots = self.store.list_slots(user).await?;
        if !slots
            .iter()
            .any(|s| &s.slot_id == slot_id && s.kind == SlotKind::AppPassword)
        {
            return Ok(false);
        }
        self.store
            .replace_slots(user, vec![], vec![*slot_id])
            .await?;
        self.registry.forget_secrets(user);
        Ok(true)
    }

    /// Makes a new recovery code (shown once), replacing any previous one.
    pub async fn set_recovery_code(
        &self,
        session: &Unlocked,
    ) -> Result<Zeroizing<String>, VaultError> {
        if session.opened_with() != SlotKind::Password {
            return Err(VaultError::NotAllowed(
                "only the account password can make a recovery code",
            ));
        }
        let user = *session.user_id();
        let (account, keys) = self.current_keys(session).await?;
        let code = generate_recovery_code();
        let slot = self
            .make_slot(
                &user,
                account.kdf_salt,
                code.as_bytes(),
                SlotKind::RecoveryCode,
                &keys,
                None,
            )
            .await?;
        let remove = self
            .store
            .list_slots(&user)
            .await?
            .into_iter()
            .filter(|s| s.kind == SlotKind::RecoveryCode)
            .map(|s| s.slot_id)
            .collect();
        self.store.replace_slots(&user, vec![slot], remove).await?;
        Ok(code)
    }

    /// Whether the user has a recovery code of the current generation.
    pub async fn has_recovery_code(&self, user: &UserId) -> Result<bool, VaultError> {
        let account = self.account(user).await?;
        Ok(self
            .store
            .list_slots(user)
            .await?
            .iter()
            .any(|s| s.kind == SlotKind::RecoveryCode && s.generation == account.generation))
    }

    /// Switches security mode. Low adds an escrow slot sealed to the operator's recovery
    /// key; high deletes it (backups taken earlier still hold it).
    pub async fn set_mode(&self, session: &Unlocked, mode: SecurityMode) -> Result<(), VaultError> {
        if session.opened_with() != SlotKind::Password {
            return Err(VaultError::NotAllowed(
                "only the account password can change the security mode",
            ));
        }
        let user = *session.user_id();
        let escrow = match mode {
            SecurityMode::High => None,
            SecurityMode::Low => {
                let (_, keys) = self.current_keys(session).await?;
                Some(self.escrow_slot(&user, &keys)?)
            }
        };
        self.store.set_mode(&user, mode, escrow).await?;
        Ok(())
    }

    /// Reset for a user who lost every secret: a new keyring generation with a new
    /// password and fresh mailboxes. Mail sealed under older generations is kept, sealed,
    /// and reopens with an old password through [`Vault::reopen`].
    pub async fn reset<F>(
        &self,
        name: &str,
        new_password: &str,
        mailboxes: F,
    ) -> Result<Unlocked, VaultError>
    where
        F: FnOnce(&Keyring, &Pepper) -> Vec<NewMailbox>,
    {
        let username = Username::new(name)?;
        let new_password = Password::new_account_password(new_password)?;
        let user = self.pepper.user_id(&username);
        let account = self.account(&user).await?;
        if account.mode == SecurityMode::Low && self.config.recovery_key.is_none() {
            return Err(VaultError::NoRecoveryKey);
        }
        let generation = Generation(account.generation.0 + 1);
        let keys = GenerationKeys::derive(generation, Secret32::random());
        let slot = self
            .make_slot(
                &user,
                account.kdf_salt,
                new_password.expose().as_bytes(),
                SlotKind::Password,
                &keys,
                None,
            )
            .await?;
        if let Some(locator) = slot.locator
            && self.store.find_slot(&user, &locator).await?.is_some()
        {
            // The "forgotten" password still opens a keyring: no reset, tell the user.
            return Err(VaultError::SecretInUse);
        }
        let mut slots = vec![slot];
        if account.mode == SecurityMode::Low {
            slots.push(self.escrow_slot(&user, &keys)?);
        }
        let public_key = *keys.public_key().as_bytes();
        let ring = Keyring::new(user, keys);
        let boxes = mailboxes(&ring, &self.pepper);
        self.store
            .reset_keyring(
                &user,
                KeyringRow {
                    user_id: user,
                    generation,
                    public_key,
                    created: now(),
                },
                slots,
                boxes,
            )
            .await?;
        // Sessions on the old keyring must end: their generation is no longer current.
        self.registry.lock(&user);
        Ok(self.registry.open(ring, SlotKind::Password))
    }

    /// Reopens mail sealed before a reset: `old_secret` (a password, app password or
    /// recovery code of an older generation) opens that generation's master key, which is
    /// then sealed under the current one. Returns the generation reopened.
    pub async fn reopen(
        &self,
        session: &Unlocked,
        old_secret: &str,
    ) -> Result<Generation, VaultError> {
        let old_secret = Password::new(old_secret)?;
        let user = *session.user_id();
        let (account, current_keys) = self.current_keys(session).await?;
        let found = self
            .find_slot_for(Some(&account), &user, old_secret.expose().as_bytes())
            .await?;
        let Some((slot, kek)) = found else {
            return Err(VaultError::NoOldKeyring);
        };
        if slot.generation >= account.generation {
            return Err(VaultError::NoOldKeyring);
        }
        let old_master = self.open_slot(&slot, &kek)?;
        let old_keys = GenerationKeys::derive(slot.generation, old_master);
        self.verify_generation(&user, &old_keys).await?;
        let key = hkdf32(current_keys.master().expose(), None, b"coffer/link");
        let wrapped = primitives::seal(
            &key,
            &link_aad(&user, slot.generation, account.generation),
            old_keys.master().expose(),
        );
        self.store
            .put_link(KeyringLinkRow {
                user_id: user,
                generation: slot.generation,
                sealed_under: account.generation,
                wrapped,
            })
            .await?;
        let reopened = slot.generation;
        session.with_mut(|k| k.add_old(old_keys))?;
        // Generations linked under the reopened one become reachable too.
        let links = self.store.list_links(&user).await?;
        loop {
            let opened = session.with(|k| open_links_once(k, &links))??;
            if opened.is_empty() {
                break;
            }
            for keys in opened {
                self.verify_generation(&user, &keys).await?;
                session.with_mut(|k| k.add_old(keys))?;
            }
        }
        Ok(reopened)
    }

    /// Operator recovery of a low-security account: the escrow slot opened with the
    /// offline recovery key, a new password set. No mail is re-encrypted.
    pub async fn recover(
        &self,
        name: &str,
        recovery_key: &RecoverySecretKey,
        new_password: &str,
    ) -> Result<Unlocked, VaultError> {
        let username = Username::new(name)?;
        let new_password = Password::new_account_password(new_password)?;
        let user = self.pepper.user_id(&username);
        let account = self.account(&user).await?;
        let escrow = self
            .store
            .list_slots(&user)
            .await?
            .into_iter()
            .find(|s| s.kind == SlotKind::Escrow && s.generation == account.generation)
            .ok_or(VaultError::NoEscrow)?;
        let decryptor = age::Decryptor::new_buffered(escrow.wrapped.as_slice())
            .map_err(|_| VaultError::Tampered(format!("escrow slot {}", escrow.slot_id)))?;
        let mut reader = decryptor
            .decrypt(std::iter::once(&recovery_key.0 as &dyn age::Identity))
            .map_err(|e| match e {
                age::DecryptError::NoMatchingKeys => VaultError::WrongRecoveryKey,
                _ => VaultError::Tampered(format!("escrow slot {}", escrow.slot_id)),
            })?;
        let mut payload = Zeroizing::new(Vec::new());
        reader
            .read_to_end(&mut payload)
            .map_err(|_| VaultError::Tampered(format!("escrow slot {}", escrow.slot_id)))?;
        let expect_len = ESCROW_MAGIC.len() + 32 + 4 + 32;
        if payload.len() != expect_len
            || &payload[..ESCROW_MAGIC.len()] != ESCROW_MAGIC
            || &payload[ESCROW_MAGIC.len()..ESCROW_MAGIC.len() + 32] != user.as_bytes()
            || payload[ESCROW_MAGIC.len() + 32..ESCROW_MAGIC.len() + 36]
                != account.generation.0.to_be_bytes()
        {
            return Err(VaultError::Tampered(format!(
                "escrow slot {}",
                escrow.slot_id
            )));
        }
        let mut mk = [0u8; 32];
        mk.copy_from_slice(&payload[expect_len - 32..]);
        let master = Secret32::new(mk);
        zeroize::Zeroize::zeroize(&mut mk);
        let keys = GenerationKeys::derive(account.generation, master.clone());
        self.verify_generation(&user, &keys).await?;
        let slot = self
            .make_slot(
                &user,
                account.kdf_salt,
                new_password.expose().as_bytes(),
                SlotKind::Password,
                &keys,
                None,
            )
            .await?;
        let remove = self
            .store
            .list_slots(&user)
            .await?
            .into_iter()
            .filter(|s| s.kind == SlotKind::Password && s.generation == account.generation)
            .map(|s| s.slot_id)
            .collect();
        match self.store.replace_slots(&user, vec![slot], remove).await {
            Ok(()) => {}
            Err(StoreError::Conflict(_)) => return Err(VaultError::SecretInUse),
            Err(e) => return Err(e.into()),
        }
        self.registry.lock(&user);
        self.unlock_from_master(user, account.generation, master, SlotKind::Password)
            .await
    }

    /// Deletes an account and all its mail. Needs no key.
    pub async fn delete_user(&self, name: &str) -> Result<bool, VaultError> {
        let user = self.user_id(name)?;
        self.registry.lock(&user);
        Ok(self.store.delete_account(&user).await?)
    }

    /// Lists accounts with their names, opened with the directory key (pepper only).
    pub async fn list_users(&self) -> Result<Vec<UserSummary>, VaultError> {
        let rows = self.store.list_accounts().await?;
        Ok(rows
            .into_iter()
            .map(|a| {
                let name = primitives::open(
                    self.pepper.directory_key(),
                    &name_aad(&a.user_id),
                    &a.sealed_name,
                )
                .ok()
                .and_then(|n| unpad_name(&n));
                UserSummary {
                    user_id: a.user_id,
                    name,
                    mode: a.mode,
                    generation: a.generation,
                    created: a.created,
                }
            })
            .collect())
    }

    /// The account row of a user by name (operator view; no key).
    pub async fn find_user(&self, name: &str) -> Result<AccountRow, VaultError> {
        let user = self.user_id(name)?;
        self.account(&user).await
    }

    /// "Lock now": wipes the user's keys in this process.
    pub fn lock(&self, user: &UserId) -> bool {
        self.registry.lock(user)
    }

    /// "Lock now" for every node sharing the store: wipes the keys here and records the
    /// moment, so that other processes wipe any keyring of this user opened before it at
    /// their next check ([`Vault::locked_elsewhere`]).
    pub async fn lock_everywhere(&self, user: &UserId) -> Result<bool, VaultError> {
        let now = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map(|d| d.as_nanos() as u64)
            .unwrap_or(0);
        self.store
            .set_meta(&lock_key(user), &now.to_be_bytes())
            .await?;
        Ok(self.registry.lock(user))
    }

    /// True (and the keys here wiped) if "lock now" was pressed for this user, on any node,
    /// after this session's keyring was opened.
    pub async fn locked_elsewhere(&self, session: &Unlocked) -> Result<bool, VaultError> {
        let Some(value) = self.store.get_meta(&lock_key(session.user_id())).await? else {
            return Ok(false);
        };
        let Ok(bytes) = <[u8; 8]>::try_from(value.as_slice()) else {
            return Ok(false);
        };
        let locked_at = UNIX_EPOCH + Duration::from_nanos(u64::from_be_bytes(bytes));
        if locked_at > session.keyring_opened_at() {
            self.registry.lock(session.user_id());
            return Ok(true);
        }
        Ok(false)
    }
}

/// Master keys of the generations that `links` make reachable from `ring` and that
/// `ring` does not hold yet.
fn open_links_once(
    ring: &Keyring,
    links: &[KeyringLinkRow],
) -> Result<Vec<GenerationKeys>, VaultError> {
    let user = ring.user_id();
    let mut out: Vec<GenerationKeys> = Vec::new();
    for link in links {
        if ring.has_generation(link.generation)
            || out.iter().any(|k| k.generation() == link.generation)
        {
            continue;
        }
        let Some(under) = ring.master_of(link.sealed_under) else {
            continue;
        };
        let key = hkdf32(under.expose(), None, b"coffer/link");
        let tampered =
            || VaultError::Tampered(format!("keyring link {} of user {user}", link.generation));
        let master = primitives::open(
            &key,
            &link_aad(user, link.generation, link.sealed_under),
            &link.wrapped,
        )
        .map_err(|_| tampered())?;
        let bytes: [u8; 32] = master.as_slice().try_into().map_err(|_| tampered())?;
        out.push(GenerationKeys::derive(
            link.generation,
            Secret32::new(bytes),
        ));
    }
    Ok(out)
}
