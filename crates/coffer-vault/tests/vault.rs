//! End-to-end tests of the vault over the embedded SQLite store: what a user logging in,
//! or an operator running the CLI, would check. Each test builds its own data directory,
//! pepper and vault.

use coffer_store::sqlite::{DB_FILE, SqliteStore};
use coffer_store::{NewMailbox, Store};
use coffer_types::{Generation, MailboxName, SecurityMode, SlotKind, UserId};
use coffer_vault::kdf::INSECURE_TEST_PARAMS;
use coffer_vault::{
    KdfParams, Keyring, Pepper, Place, Purpose, RecoveryPublicKey, RecoverySecretKey, Unlocked,
    Vault, VaultConfig, VaultError, normalize_recovery_code, recovery,
};
use rusqlite::{Connection, params};
use std::future::Future;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant};
use tokio::sync::{RwLock, RwLockReadGuard, RwLockWriteGuard};
use zeroize::Zeroizing;

/// A "realistic-ish" Argon2id cost: enough work that timing differences are visible.
const REAL_COST: KdfParams = KdfParams {
    memory_kib: 4096,
    time_cost: 1,
    parallelism: 1,
};

const PW: &str = "correct horse battery";
const PW2: &str = "another long password";

// --- fixtures -----------------------------------------------------------------------

/// A temporary directory removed on drop.
struct TempDir(PathBuf);

impl TempDir {
    fn new() -> Self {
        let p = std::env::temp_dir().join(format!(
            "coffer-vault-it-{}-{:016x}",
            std::process::id(),
            rand::random::<u64>()
        ));
        std::fs::create_dir_all(&p).unwrap();
        TempDir(p)
    }
    fn path(&self) -> &Path {
        &self.0
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

/// Tests that measure time run alone: every other test holds this lock shared, they
/// hold it exclusively (the machine may have as few as two cores).
static TIMING: RwLock<()> = RwLock::const_new(());

/// A test's hold on [`TIMING`], released when its [`Env`] drops.
struct Turn {
    _shared: Option<RwLockReadGuard<'static, ()>>,
    _exclusive: Option<RwLockWriteGuard<'static, ()>>,
}

/// One installation: data directory, pepper and vault. Fields drop in order, so the
/// vault (and its database connections) goes before the directory.
struct Env {
    vault: Vault,
    pepper_bytes: [u8; 32],
    config: VaultConfig,
    dir: TempDir,
    _turn: Turn,
}

fn config(kdf: KdfParams, grace: Duration, recovery_key: Option<RecoveryPublicKey>) -> VaultConfig {
    VaultConfig {
        kdf,
        argon2_concurrency: 4,
        grace,
        recovery_key,
    }
}

fn test_config() -> VaultConfig {
    config(INSECURE_TEST_PARAMS, Duration::ZERO, None)
}

impl Env {
    async fn new(config: VaultConfig) -> Self {
        let turn = Turn {
            _shared: Some(TIMING.read().await),
            _exclusive: None,
        };
        Self::with_turn(config, turn)
    }

    /// For tests that measure time: no other test of this file runs meanwhile.
    async fn exclusive(config: VaultConfig) -> Self {
        let turn = Turn {
            _shared: None,
            _exclusive: Some(TIMING.write().await),
        };
        Self::with_turn(config, turn)
    }

    fn with_turn(config: VaultConfig, turn: Turn) -> Self {
        let dir = TempDir::new();
        let pepper_bytes: [u8; 32] = rand::random();
        let vault = open_vault(dir.path(), pepper_bytes, config.clone());
        Env {
            vault,
            pepper_bytes,
            config,
            dir,
            _turn: turn,
        }
    }

    /// A second vault on the same data directory and pepper: another process, such as
    /// the CLI running beside the server.
    fn other_process(&self) -> Vault {
        open_vault(self.dir.path(), self.pepper_bytes, self.config.clone())
    }

    async fn create(&self, name: &str, password: &str) -> Unlocked {
        self.vault
            .create_user(name, password, SecurityMode::High, inbox)
            .await
            .unwrap()
    }

    fn uid(&self, name: &str) -> UserId {
        self.vault.user_id(name).unwrap()
    }

    /// A direct connection to the database, as an attacker with disk access has.
    fn db(&self) -> Connection {
        Connection::open(self.dir.path().join(DB_FILE)).unwrap()
    }
}

fn open_vault(dir: &Path, pepper: [u8; 32], config: VaultConfig) -> Vault {
    let store: Arc<dyn Store> = Arc::new(SqliteStore::open(dir).unwrap());
    Vault::new(store, Arc::new(Pepper::from_bytes(pepper)), config)
}

/// The mailboxes of a new account or keyring: one INBOX.
fn inbox(k: &Keyring, p: &Pepper) -> Vec<NewMailbox> {
    let generation = k.current_generation();
    vec![NewMailbox {
        generation,
        sealed: k.seal(Place::Setting("test"), b"INBOX").1,
        lookup: p.mailbox_lookup(k.user_id(), generation, &MailboxName::inbox()),
        is_inbox: true,
    }]
}

type Sealed = (Generation, Vec<u8>);

fn seal_marker(s: &Unlocked) -> Sealed {
    s.with(|k| k.seal(Place::Setting("x"), b"marker")).unwrap()
}

/// Opens the marker with a session's keyring; Err if the keyring cannot open it.
fn open_marker(s: &Unlocked, m: &Sealed) -> Result<Vec<u8>, String> {
    s.with(|k| k.open(m.0, Place::Setting("x"), &m.1))
        .map_err(|e| e.to_string())?
        .map(|v| v.to_vec())
        .map_err(|e| e.to_string())
}

fn assert_opens(s: &Unlocked, m: &Sealed) {
    assert_eq!(open_marker(s, m).as_deref(), Ok(&b"marker"[..]));
}

/// The error of a call expected to fail (sessions have no Debug, so no unwrap_err).
#[track_caller]
fn err<T>(r: Result<T, VaultError>) -> VaultError {
    match r {
        Ok(_) => panic!("expected an error, got Ok"),
        Err(e) => e,
    }
}

#[track_caller]
fn assert_auth_failed<T>(r: Result<T, VaultError>) {
    let e = err(r);
    assert!(
        matches!(e, VaultError::AuthFailed),
        "expected AuthFailed, got {e:?}"
    );
}

async fn timed<F: Future>(f: F) -> (Duration, F::Output) {
    let start = Instant::now();
    let out = f.await;
    (start.elapsed(), out)
}

fn median(mut v: Vec<Duration>) -> Duration {
    v.sort();
    v[v.len() / 2]
}

fn within_factor_2(a: Duration, b: Duration) -> bool {
    a < b * 2 && b < a * 2
}

/// Timing on a shared machine is noisy: another process may take the core for a few
/// milliseconds, which is as long as one Argon2id run here. A real difference shows in
/// every round; noise does not. So a timing property is measured in up to this many
/// rounds, and holds if it holds in one of them.
const TIMING_ROUNDS: usize = 5;

/// Medians of 5 wrong-password logins of `known` and 5 unknown-user logins, measured
/// interleaved so that load from elsewhere hits both series alike.
async fn wrong_vs_unknown(vault: &Vault, known: &str) -> (Duration, Duration) {
    let mut wrong = Vec::new();
    let mut unknown = Vec::new();
    for i in 0..5 {
        let (t, r) = timed(vault.login(known, &format!("wrong password {i}"), Purpose::Mail)).await;
        assert_auth_failed(r);
        wrong.push(t);
        let (t, r) = timed(vault.login(&format!("nobody{i}"), PW, Purpose::Mail)).await;
        assert_auth_failed(r);
        unknown.push(t);
    }
    (median(wrong), median(unknown))
}

/// Asserts that wrong-password and unknown-user logins take about the same time.
async fn assert_failures_take_the_same_time(vault: &Vault, known: &str) {
    // Warm up (blocking thread pool, reader connections).
    let _ = vault.login(known, "warm up wrong", Purpose::Mail).await;
    let _ = vault.login("nobody", "warm up wrong", Purpose::Mail).await;
    let mut rounds = Vec::new();
    for _ in 0..TIMING_ROUNDS {
        let (w, u) = wrong_vs_unknown(vault, known).await;
        if within_factor_2(w, u) {
            return;
        }
        rounds.push((w, u));
    }
    panic!(
        "median (wrong password, unknown user) not within a factor of 2 in any round: {rounds:?}"
    );
}

/// Flips one bit in the middle of a BLOB column of the row(s) of `user`.
fn flip_byte(db: &Connection, table: &str, column: &str, extra_where: &str, user: &UserId) {
    let select = format!("SELECT {column} FROM {table} WHERE user_id = ?1 {extra_where}");
    let mut value: Vec<u8> = db
        .query_row(&select, params![user.as_bytes().as_slice()], |r| r.get(0))
        .unwrap();
    let i = value.len() / 2;
    value[i] ^= 0x01;
    let update = format!("UPDATE {table} SET {column} = ?1 WHERE user_id = ?2 {extra_where}");
    let n = db
        .execute(&update, params![value, user.as_bytes().as_slice()])
        .unwrap();
    assert_eq!(n, 1, "exactly one row tampered with");
}

// --- 1. login ---------------------------------------------------------------------------

#[tokio::test(flavor = "multi_thread")]
async fn create_then_login_with_the_password() {
    let env = Env::new(test_config()).await;
    let created = env.create("Alice", PW).await;
    assert_eq!(created.opened_with(), SlotKind::Password);
    let marker = seal_marker(&created);
    drop(created);
    assert!(!env.vault.registry().is_unlocked(&env.uid("alice")));

    for purpose in [Purpose::Mail, Purpose::Account] {
        // The name is canonicalised: any case logs in to the same account.
        let s = env.vault.login("alice", PW, purpose).await.unwrap();
        assert_eq!(s.user_id(), &env.uid("ALICE"));
        assert_eq!(s.opened_with(), SlotKind::Password);
        assert_opens(&s, &marker);
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn wrong_password_and_unknown_user_fail_alike() {
    let env = Env::new(test_config()).await;
    drop(env.create("alice", PW).await);

    let wrong = err(env
        .vault
        .login("alice", "not the password", Purpose::Mail)
        .await);
    let unknown = err(env.vault.login("mallory", PW, Purpose::Mail).await);
    assert!(matches!(wrong, VaultError::AuthFailed), "{wrong:?}");
    assert!(matches!(unknown, VaultError::AuthFailed), "{unknown:?}");
    assert_eq!(wrong.to_string(), unknown.to_string());
    // Also for the account purpose, and with the password of another account.
    drop(env.create("bob", PW2).await);
    assert_auth_failed(env.vault.login("alice", PW2, Purpose::Account).await);
}

#[tokio::test(flavor = "multi_thread")]
async fn wrong_password_and_unknown_user_take_about_the_same_time() {
    let env = Env::exclusive(config(REAL_COST, Duration::ZERO, None)).await;
    drop(env.create("alice", PW).await);
    assert_failures_take_the_same_time(&env.vault, "alice").await;
}

// --- 2. invalid inputs ------------------------------------------------------------------

#[tokio::test(flavor = "multi_thread")]
async fn invalid_usernames_are_refused() {
    let env = Env::new(test_config()).await;
    let long = "a".repeat(256);
    for name in ["", long.as_str(), "a b", " alice", "alice "] {
        let e = err(env
            .vault
            .create_user(name, PW, SecurityMode::High, inbox)
            .await);
        assert!(
            matches!(e, VaultError::InvalidUsername(_)),
            "create {name:?}: {e:?}"
        );
        let e = err(env.vault.login(name, PW, Purpose::Mail).await);
        assert!(
            matches!(e, VaultError::InvalidUsername(_)),
            "login {name:?}: {e:?}"
        );
    }
    // 255 bytes is the limit, and is accepted.
    drop(env.create(&"a".repeat(255), PW).await);
    assert!(env.vault.list_users().await.unwrap().len() == 1);
}

#[tokio::test(flavor = "multi_thread")]
async fn invalid_passwords_are_refused() {
    let env = Env::new(test_config()).await;
    let long = "x".repeat(1025);
    for pw in ["", long.as_str()] {
        let e = err(env
            .vault
            .create_user("alice", pw, SecurityMode::High, inbox)
            .await);
        assert!(
            matches!(e, VaultError::InvalidPassword(_)),
            "create with {} bytes: {e:?}",
            pw.len()
        );
    }
    // Nine characters are too short for a new account password; ten are enough.
    let e = err(env
        .vault
        .create_user("alice", "123456789", SecurityMode::High, inbox)
        .await);
    assert!(matches!(e, VaultError::InvalidPassword(_)), "{e:?}");
    assert!(
        env.vault.list_users().await.unwrap().is_empty(),
        "nothing was created"
    );
    let s = env.create("alice", "0123456789").await;

    for pw in ["", long.as_str()] {
        let e = err(env.vault.login("alice", pw, Purpose::Mail).await);
        assert!(
            matches!(e, VaultError::InvalidPassword(_)),
            "login with {} bytes: {e:?}",
            pw.len()
        );
    }
    // 1024 bytes is still a password that can be typed at login (and is just wrong).
    assert_auth_failed(
        env.vault
            .login("alice", &"x".repeat(1024), Purpose::Mail)
            .await,
    );

    let e = err(env.vault.change_password(&s, "short").await);
    assert!(matches!(e, VaultError::InvalidPassword(_)), "{e:?}");
    let e = err(env.vault.reset("alice", "short", inbox).await);
    assert!(matches!(e, VaultError::InvalidPassword(_)), "{e:?}");
    // The refused change left the password as it was.
    drop(s);
    env.vault
        .login("alice", "0123456789", Purpose::Account)
        .await
        .unwrap();
}

#[tokio::test(flavor = "multi_thread")]
async fn creating_an_existing_user_is_refused() {
    let env = Env::new(test_config()).await;
    let s = env.create("alice", PW).await;
    let marker = seal_marker(&s);
    drop(s);
    for name in ["alice", "ALICE"] {
        let e = err(env
            .vault
            .create_user(name, PW2, SecurityMode::High, inbox)
            .await);
        assert!(matches!(e, VaultError::UserExists), "{name}: {e:?}");
    }
    // The existing account is untouched: same password, same keys.
    let s = env.vault.login("alice", PW, Purpose::Mail).await.unwrap();
    assert_opens(&s, &marker);
    assert_auth_failed(env.vault.login("alice", PW2, Purpose::Mail).await);
    assert_eq!(env.vault.list_users().await.unwrap().len(), 1);
}

// --- 3. password change -----------------------------------------------------------------

#[tokio::test(flavor = "multi_thread")]
async fn password_change_keeps_the_keys_and_retires_the_old_password() {
    let env = Env::new(test_config()).await;
    drop(env.create("alice", PW).await);
    let s = env
        .vault
        .login("alice", PW, Purpose::Account)
        .await
        .unwrap();
    let marker = seal_marker(&s);

    env.vault.change_password(&s, PW2).await.unwrap();
    // While the keyring is still open (re-login fast path), the old password is refused.
    assert!(env.vault.registry().is_unlocked(s.user_id()));
    assert_auth_failed(env.vault.login("alice", PW, Purpose::Mail).await);
    let s2 = env.vault.login("alice", PW2, Purpose::Mail).await.unwrap();
    assert_opens(&s2, &marker);

    // After locking: a full login with the new password, and the old one still fails.
    let user = *s.user_id();
    drop((s, s2));
    env.vault.registry().lock(&user);
    let s = env
        .vault
        .login("alice", PW2, Purpose::Account)
        .await
        .unwrap();
    assert_opens(&s, &marker);
    drop(s);
    assert_auth_failed(env.vault.login("alice", PW, Purpose::Mail).await);
    assert_auth_failed(env.vault.login("alice", PW, Purpose::Account).await);
}

// --- 4. app passwords -------------------------------------------------------------------

#[tokio::test(flavor = "multi_thread")]
async fn app_passwords_open_mail_only_and_can_be_revoked() {
    let env = Env::new(test_config()).await;
    let s = env.create("alice", PW).await;
    let user = *s.user_id();
    let marker = seal_marker(&s);

    let (slot_id, secret) = env.vault.add_app_password(&s, "  Phone  ").await.unwrap();
    assert_ne!(secret.as_str(), PW);
    let listed = env.vault.list_app_passwords(&s).await.unwrap();
    assert_eq!(listed.len(), 1);
    assert_eq!(listed[0].slot_id, slot_id);
    assert_eq!(listed[0].label, "Phone");

    // Logs in for mail (full path: the app password was never seen by this registry).
    let app = env
        .vault
        .login("alice", &secret, Purpose::Mail)
        .await
        .unwrap();
    assert_eq!(app.opened_with(), SlotKind::AppPassword);
    assert_opens(&app, &marker);
    // ...and from a cold start too.
    drop((s, app));
    env.vault.registry().lock(&user);
    let app = env
        .vault
        .login("alice", &secret, Purpose::Mail)
        .await
        .unwrap();
    assert_opens(&app, &marker);
    // Again while unlocked (fast path).
    let app2 = env
        .vault
        .login("alice", &secret, Purpose::Mail)
        .await
        .unwrap();
    assert_eq!(app2.opened_with(), SlotKind::AppPassword);
    drop(app2);

    // Not for account changes, neither from a cold start nor while unlocked.
    let e = err(env.vault.login("alice", &secret, Purpose::Account).await);
    assert!(
        matches!(e, VaultError::KindNotAccepted(SlotKind::AppPassword)),
        "{e:?}"
    );
    let e = err(env.vault.change_password(&app, PW2).await);
    assert!(matches!(e, VaultError::NotAllowed(_)), "{e:?}");
    let e = err(env.vault.add_app_password(&app, "Laptop").await);
    assert!(matches!(e, VaultError::NotAllowed(_)), "{e:?}");
    // The refused change did not change the password.
    let s = env
        .vault
        .login("alice", PW, Purpose::Account)
        .await
        .unwrap();
    drop(s);

    // Revoked while the keyring is unlocked (`app` is still open): the next login fails.
    assert!(env.vault.registry().is_unlocked(&user));
    assert!(
        env.vault
            .revoke_app_password(&user, &slot_id)
            .await
            .unwrap()
    );
    assert!(env.vault.registry().is_unlocked(&user));
    assert_auth_failed(env.vault.login("alice", &secret, Purpose::Mail).await);
    let s = env
        .vault
        .login("alice", PW, Purpose::Account)
        .await
        .unwrap();
    assert!(env.vault.list_app_passwords(&s).await.unwrap().is_empty());
    assert!(
        !env.vault
            .revoke_app_password(&user, &slot_id)
            .await
            .unwrap(),
        "already gone"
    );
    drop((s, app));
    env.vault.registry().lock(&user);
    assert_auth_failed(env.vault.login("alice", &secret, Purpose::Mail).await);
}

#[tokio::test(flavor = "multi_thread")]
async fn an_app_password_revoked_by_another_process_stops_working_at_once() {
    let env = Env::new(test_config()).await;
    let s = env.create("alice", PW).await;
    let user = *s.user_id();
    let (slot_id, secret) = env.vault.add_app_password(&s, "Phone").await.unwrap();
    // The server remembers the app password for its re-login fast path.
    let app = env
        .vault
        .login("alice", &secret, Purpose::Mail)
        .await
        .unwrap();
    drop(
        env.vault
            .login("alice", &secret, Purpose::Mail)
            .await
            .unwrap(),
    );

    // The CLI, another process with its own registry, revokes it.
    let cli = env.other_process();
    assert!(cli.revoke_app_password(&user, &slot_id).await.unwrap());

    assert!(env.vault.registry().is_unlocked(&user));
    assert_auth_failed(env.vault.login("alice", &secret, Purpose::Mail).await);
    drop((s, app));
}

// --- 5. recovery code -------------------------------------------------------------------

#[tokio::test(flavor = "multi_thread")]
async fn recovery_code_resets_the_password_once() {
    let env = Env::new(test_config()).await;
    let s = env.create("alice", PW).await;
    let user = *s.user_id();
    let marker = seal_marker(&s);
    assert!(!env.vault.has_recovery_code(&user).await.unwrap());
    let code = env.vault.set_recovery_code(&s).await.unwrap();
    assert!(env.vault.has_recovery_code(&user).await.unwrap());
    assert_eq!(code.len(), 35, "{} chars", code.len());
    drop(s);

    // As typed by a person: upper case, spaces instead of dashes.
    let typed = code.to_uppercase().replace('-', " ");
    let normalized = normalize_recovery_code(&typed).expect("normalizes");
    assert_eq!(normalized.as_str(), code.as_str());
    assert!(normalize_recovery_code("abcde").is_none());

    let r = env
        .vault
        .login("alice", &code, Purpose::Recovery)
        .await
        .unwrap();
    assert_eq!(r.opened_with(), SlotKind::RecoveryCode);
    assert_opens(&r, &marker);
    drop(r);
    // The code is not a mail password.
    let e = err(env.vault.login("alice", &code, Purpose::Mail).await);
    assert!(
        matches!(e, VaultError::KindNotAccepted(SlotKind::RecoveryCode)),
        "{e:?}"
    );

    let r = env
        .vault
        .login("alice", &normalized, Purpose::Recovery)
        .await
        .unwrap();
    assert_eq!(r.opened_with(), SlotKind::RecoveryCode);
    env.vault.change_password(&r, PW2).await.unwrap();
    assert_opens(&r, &marker);

    // Used up, both while unlocked and from a cold start.
    assert_auth_failed(env.vault.login("alice", &code, Purpose::Recovery).await);
    assert!(!env.vault.has_recovery_code(&user).await.unwrap());
    drop(r);
    env.vault.registry().lock(&user);
    assert_auth_failed(env.vault.login("alice", &code, Purpose::Recovery).await);
    assert_auth_failed(env.vault.login("alice", PW, Purpose::Account).await);
    let s = env
        .vault
        .login("alice", PW2, Purpose::Account)
        .await
        .unwrap();
    assert_opens(&s, &marker);
}

// --- 6. security mode and operator recovery ---------------------------------------------

struct RecoveryKeys {
    public: RecoveryPublicKey,
    secret: RecoverySecretKey,
}

fn recovery_keys() -> RecoveryKeys {
    let generated = recovery::generate();
    let public = RecoveryPublicKey::parse(&generated.public).unwrap();
    let text = Zeroizing::new(generated.secret_file_text.as_bytes().to_vec());
    let secret = RecoverySecretKey::parse_file_text(&text).unwrap();
    RecoveryKeys { public, secret }
}

#[tokio::test(flavor = "multi_thread")]
async fn low_security_needs_a_recovery_key() {
    let env = Env::new(test_config()).await;
    let s = env.create("alice", PW).await;
    let e = err(env.vault.set_mode(&s, SecurityMode::Low).await);
    assert!(matches!(e, VaultError::NoRecoveryKey), "{e:?}");
    assert_eq!(
        env.vault.find_user("alice").await.unwrap().mode,
        SecurityMode::High
    );
    let e = err(env
        .vault
        .create_user("bob", PW, SecurityMode::Low, inbox)
        .await);
    assert!(matches!(e, VaultError::NoRecoveryKey), "{e:?}");
}

#[tokio::test(flavor = "multi_thread")]
async fn operator_recovers_a_low_security_account() {
    let keys = recovery_keys();
    let env = Env::new(config(
        INSECURE_TEST_PARAMS,
        Duration::ZERO,
        Some(keys.public.clone()),
    ))
    .await;
    let s = env.create("alice", PW).await;
    let marker = seal_marker(&s);
    env.vault.set_mode(&s, SecurityMode::Low).await.unwrap();
    assert_eq!(
        env.vault.find_user("alice").await.unwrap().mode,
        SecurityMode::Low
    );
    drop(s);

    // Another operator's key opens nothing, and changes nothing.
    let other = recovery_keys();
    let e = err(env.vault.recover("alice", &other.secret, PW2).await);
    assert!(matches!(e, VaultError::WrongRecoveryKey), "{e:?}");
    env.vault
        .login("alice", PW, Purpose::Account)
        .await
        .unwrap();

    let r = env.vault.recover("alice", &keys.secret, PW2).await.unwrap();
    assert_opens(&r, &marker);
    let user = *r.user_id();
    drop(r);
    env.vault.registry().lock(&user);
    assert_auth_failed(env.vault.login("alice", PW, Purpose::Account).await);
    let s = env
        .vault
        .login("alice", PW2, Purpose::Account)
        .await
        .unwrap();
    assert_opens(&s, &marker);

    // High security again: the escrow slot is gone and the operator can do nothing.
    env.vault.set_mode(&s, SecurityMode::High).await.unwrap();
    assert_eq!(
        env.vault.find_user("alice").await.unwrap().mode,
        SecurityMode::High
    );
    let e = err(env
        .vault
        .recover("alice", &keys.secret, "a third long password")
        .await);
    assert!(matches!(e, VaultError::NoEscrow), "{e:?}");
    drop(s);
    env.vault.registry().lock(&user);
    env.vault
        .login("alice", PW2, Purpose::Account)
        .await
        .unwrap();
}

// --- 7. reset and reopen ----------------------------------------------------------------

#[tokio::test(flavor = "multi_thread")]
async fn reset_starts_a_new_keyring_and_reopen_links_the_old_one() {
    let env = Env::new(test_config()).await;
    let s1 = env.create("alice", PW).await;
    let user = *s1.user_id();
    let marker = seal_marker(&s1);
    assert_eq!(marker.0, Generation(1));

    // "Forgetting" the current password is not a reason to reset.
    let e = err(env.vault.reset("alice", PW, inbox).await);
    assert!(matches!(e, VaultError::SecretInUse), "{e:?}");
    assert_eq!(
        env.vault.find_user("alice").await.unwrap().generation,
        Generation(1)
    );

    let s2 = env.vault.reset("alice", PW2, inbox).await.unwrap();
    assert_eq!(s2.with(|k| k.current_generation()).unwrap(), Generation(2));
    assert_eq!(
        env.vault.find_user("alice").await.unwrap().generation,
        Generation(2)
    );
    assert!(
        open_marker(&s2, &marker).is_err(),
        "the new keyring must not open old mail"
    );
    assert!(s1.is_locked(), "sessions on the old keyring end");
    assert_auth_failed(env.vault.login("alice", PW, Purpose::Mail).await);
    assert_auth_failed(env.vault.login("alice", PW, Purpose::Account).await);
    let e = err(env.vault.reset("alice", PW2, inbox).await);
    assert!(matches!(e, VaultError::SecretInUse), "{e:?}");

    // A wrong "old" password reopens nothing.
    let e = err(env.vault.reopen(&s2, "never was a password").await);
    assert!(matches!(e, VaultError::NoOldKeyring), "{e:?}");
    assert_eq!(env.vault.reopen(&s2, PW).await.unwrap(), Generation(1));
    assert_opens(&s2, &marker);

    // The link is stored: a cold login with the new password opens the old mail too.
    drop((s1, s2));
    env.vault.registry().lock(&user);
    assert!(!env.vault.registry().is_unlocked(&user));
    let s = env.vault.login("alice", PW2, Purpose::Mail).await.unwrap();
    assert_eq!(
        s.with(|k| k.generations().collect::<Vec<_>>()).unwrap(),
        vec![Generation(1), Generation(2)]
    );
    assert_opens(&s, &marker);
    drop(s);
    assert_auth_failed(env.vault.login("alice", PW, Purpose::Mail).await);
}

// --- 8. tampering -----------------------------------------------------------------------

#[tokio::test(flavor = "multi_thread")]
async fn a_tampered_password_slot_is_reported_as_tampering() {
    let env = Env::new(test_config()).await;
    drop(env.create("alice", PW).await);
    let user = env.uid("alice");
    flip_byte(&env.db(), "slots", "wrapped", "AND kind = 1", &user);
    let e = err(env.vault.login("alice", PW, Purpose::Mail).await);
    assert!(matches!(e, VaultError::Tampered(_)), "{e:?}");
    // A wrong password still fails as usual: it does not find the slot at all.
    assert_auth_failed(env.vault.login("alice", PW2, Purpose::Mail).await);
    assert!(!env.vault.registry().is_unlocked(&user));
}

#[tokio::test(flavor = "multi_thread")]
async fn a_tampered_account_name_hides_only_that_name() {
    let env = Env::new(test_config()).await;
    drop(env.create("alice", PW).await);
    drop(env.create("bob", PW).await);
    drop(env.create("carol", PW).await);
    let alice = env.uid("alice");
    flip_byte(&env.db(), "accounts", "sealed_name", "", &alice);

    let users = env.vault.list_users().await.unwrap();
    assert_eq!(users.len(), 3);
    for u in &users {
        if u.user_id == alice {
            assert_eq!(u.name, None);
        } else {
            assert!(
                u.name.as_deref() == Some("bob") || u.name.as_deref() == Some("carol"),
                "{:?}",
                u.name
            );
            assert_eq!(env.uid(u.name.as_deref().unwrap()), u.user_id);
        }
    }
    // The name is not used to log in: alice still can.
    env.vault.login("alice", PW, Purpose::Mail).await.unwrap();
}

#[tokio::test(flavor = "multi_thread")]
async fn a_replaced_public_key_is_reported_as_tampering() {
    let env = Env::new(test_config()).await;
    drop(env.create("alice", PW).await);
    drop(env.create("bob", PW).await);
    let bob = env.uid("bob");
    flip_byte(
        &env.db(),
        "keyrings",
        "public_key",
        "AND generation = 1",
        &bob,
    );
    let e = err(env.vault.login("bob", PW, Purpose::Mail).await);
    assert!(matches!(e, VaultError::Tampered(_)), "{e:?}");
    assert!(!env.vault.registry().is_unlocked(&bob));
    env.vault.login("alice", PW, Purpose::Mail).await.unwrap();
}

// --- 9. registry ------------------------------------------------------------------------

#[tokio::test(flavor = "multi_thread")]
async fn sessions_share_one_keyring_and_lock_now_ends_them() {
    let env = Env::new(test_config()).await;
    drop(env.create("alice", PW).await);
    let reg = env.vault.registry();
    assert!(reg.unlocked().is_empty());

    let a = env.vault.login("alice", PW, Purpose::Mail).await.unwrap();
    let b = env
        .vault
        .login("alice", PW, Purpose::Account)
        .await
        .unwrap();
    let unlocked = reg.unlocked();
    assert_eq!(unlocked.len(), 1);
    assert_eq!(&unlocked[0].user, a.user_id());
    assert_eq!(unlocked[0].sessions, 2);
    // Same keyring: what one session seals, the other opens.
    let marker = seal_marker(&a);
    assert_opens(&b, &marker);

    assert!(reg.lock(a.user_id()));
    assert!(a.is_locked() && b.is_locked());
    assert!(matches!(a.with(|_| ()), Err(coffer_vault::Locked)));
    assert!(matches!(b.with(|_| ()), Err(coffer_vault::Locked)));
    assert!(reg.unlocked().is_empty());
    // Sessions of the wiped keyring do not disturb a new one.
    let c = env.vault.login("alice", PW, Purpose::Mail).await.unwrap();
    drop((a, b));
    assert_eq!(reg.unlocked()[0].sessions, 1);
    assert_opens(&c, &marker);
    assert!(!c.is_locked());
}

#[tokio::test(flavor = "multi_thread")]
async fn with_no_grace_the_last_session_wipes_the_keyring() {
    let env = Env::new(test_config()).await;
    drop(env.create("alice", PW).await);
    let user = env.uid("alice");
    let reg = env.vault.registry();
    let a = env.vault.login("alice", PW, Purpose::Mail).await.unwrap();
    let b = a.another_session().unwrap();
    assert_eq!(reg.unlocked()[0].sessions, 2);
    drop(a);
    assert!(reg.is_unlocked(&user), "one session is left");
    assert_eq!(reg.unlocked()[0].sessions, 1);
    drop(b);
    assert!(!reg.is_unlocked(&user));
    assert!(reg.unlocked().is_empty());
}

#[tokio::test(flavor = "multi_thread")]
async fn with_a_grace_the_keyring_stays_until_swept() {
    let grace = Duration::from_millis(50);
    let env = Env::new(config(INSECURE_TEST_PARAMS, grace, None)).await;
    let s = env.create("alice", PW).await;
    let user = *s.user_id();
    let reg = env.vault.registry();

    let dropped = Instant::now();
    drop(s);
    let swept = reg.sweep();
    if dropped.elapsed() < grace {
        assert_eq!(swept, 0, "swept before the grace passed");
        assert!(reg.is_unlocked(&user));
        assert_eq!(reg.unlocked()[0].sessions, 0);
    }
    tokio::time::sleep(grace + Duration::from_millis(20)).await;
    assert!(reg.is_unlocked(&user), "nothing but sweep removes it");
    assert_eq!(reg.sweep(), 1);
    assert!(!reg.is_unlocked(&user));
    assert!(reg.unlocked().is_empty());

    // A session that is still open is never swept, however old.
    let s = env.vault.login("alice", PW, Purpose::Mail).await.unwrap();
    tokio::time::sleep(grace + Duration::from_millis(20)).await;
    assert_eq!(reg.sweep(), 0);
    assert!(!s.is_locked());
}

// --- 10. re-login fast path -------------------------------------------------------------

#[tokio::test(flavor = "multi_thread")]
async fn relogin_while_unlocked_skips_argon2_but_checks_the_password() {
    let env = Env::exclusive(config(REAL_COST, Duration::ZERO, None)).await;
    drop(env.create("alice", PW).await);
    let user = env.uid("alice");
    assert!(!env.vault.registry().is_unlocked(&user));

    let mut rounds = Vec::new();
    let sessions = loop {
        // First login from locked: Argon2id. Second while unlocked: the fast path.
        let (slow, first) = timed(env.vault.login("alice", PW, Purpose::Mail)).await;
        let first = first.unwrap();
        let (fast, second) = timed(env.vault.login("alice", PW, Purpose::Mail)).await;
        let second = second.unwrap();
        assert_eq!(env.vault.registry().unlocked()[0].sessions, 2);
        let marker = seal_marker(&first);
        assert_opens(&second, &marker);
        if fast < slow / 2 {
            break (first, second);
        }
        rounds.push((slow, fast));
        assert!(
            rounds.len() < TIMING_ROUNDS,
            "(first login, re-login) times; the re-login was never under half: {rounds:?}"
        );
        drop((first, second));
        assert!(!env.vault.registry().is_unlocked(&user));
    };

    assert_auth_failed(
        env.vault
            .login("alice", "not the password", Purpose::Mail)
            .await,
    );
    assert_auth_failed(
        env.vault
            .login("alice", &format!("{PW} "), Purpose::Mail)
            .await,
    );
    assert_eq!(env.vault.registry().unlocked()[0].sessions, 2);
    drop(sessions);
}

// --- regressions: bugs found by these tests, fixed in src ---------------------------------

#[tokio::test(flavor = "multi_thread")]
async fn a_session_of_a_locked_keyring_cannot_join_a_newer_one() {
    let env = Env::new(test_config()).await;
    drop(env.create("alice", PW).await);
    let old = env.vault.login("alice", PW, Purpose::Mail).await.unwrap();
    let user = *old.user_id();
    env.vault.lock(&user); // "lock now" from the panel
    assert!(old.is_locked());
    // The user logs in again on another device.
    let _fresh = env.vault.login("alice", PW, Purpose::Mail).await.unwrap();
    // The locked session must stay locked: it may not borrow the new keyring.
    assert!(
        old.another_session().is_err(),
        "a locked session got a live session on the new keyring"
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn a_session_ended_by_a_reset_cannot_join_the_new_keyring() {
    let env = Env::new(test_config()).await;
    let old = env.create("alice", PW).await;
    let _new = env.vault.reset("alice", PW2, inbox).await.unwrap();
    assert!(old.is_locked());
    match old.another_session() {
        Err(_) => {}
        Ok(s) => panic!(
            "a session of the reset generation 1 joined generation {:?}",
            s.with(|k| k.current_generation()).unwrap()
        ),
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn a_session_stale_after_a_reset_by_another_process_cannot_break_the_account() {
    let env = Env::new(test_config()).await;
    let stale = env.create("alice", PW).await;
    let user = *stale.user_id();
    // `coffer user reset` in the CLI, beside the running server.
    drop(
        env.other_process()
            .reset("alice", PW2, inbox)
            .await
            .unwrap(),
    );
    assert_eq!(
        env.vault.find_user("alice").await.unwrap().generation,
        Generation(2)
    );

    // The server's session still holds generation 1 and asks for a password change.
    let pw3 = "a third long password";
    let changed = env.vault.change_password(&stale, pw3).await;
    drop(stale);
    env.vault.registry().lock(&user);
    // Whatever the answer, the password the user was told is current must log in.
    let current = if changed.is_ok() { pw3 } else { PW2 };
    let login = env.vault.login("alice", current, Purpose::Account).await;
    assert!(
        login.is_ok(),
        "change_password answered {:?}; login with the password now current fails: {:?}",
        changed.err(),
        login.err()
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn after_a_cost_upgrade_a_login_rewraps_the_slot_and_failures_take_the_same_time_again() {
    let env = Env::exclusive(config(REAL_COST, Duration::ZERO, None)).await;
    drop(env.create("alice", PW).await);
    // The operator raises the Argon2id cost (re-calibration) and restarts the server.
    let upgraded = KdfParams {
        time_cost: 16,
        ..REAL_COST
    };
    let server = open_vault(
        env.dir.path(),
        env.pepper_bytes,
        config(upgraded, Duration::ZERO, None),
    );
    // Until the user's next login their slot keeps the old cost (docs/SECURITY.md says
    // so); the first successful login re-wraps it at the new cost under the same id.
    let before: Vec<_> = server
        .store()
        .list_slots(&server.user_id("alice").unwrap())
        .await
        .unwrap();
    drop(server.login("alice", PW, Purpose::Mail).await.unwrap());
    server.registry().lock(&server.user_id("alice").unwrap());
    let after: Vec<_> = server
        .store()
        .list_slots(&server.user_id("alice").unwrap())
        .await
        .unwrap();
    assert_eq!(before.len(), after.len());
    assert_eq!(before[0].slot_id, after[0].slot_id, "same slot id");
    assert_eq!(after[0].kdf, Some(upgraded), "re-wrapped at the new cost");
    assert!(
        server.login("alice", PW, Purpose::Mail).await.is_ok(),
        "still opens"
    );
    server.registry().lock(&server.user_id("alice").unwrap());
    assert_failures_take_the_same_time(&server, "alice").await;
}

#[tokio::test(flavor = "multi_thread")]
async fn the_keyring_cache_is_shared_by_sessions_and_wiped_with_the_keys() {
    let env = Env::new(test_config()).await;
    let a = env.create("alice", PW).await;
    let b = env.vault.login("alice", PW, Purpose::Mail).await.unwrap();
    a.with(|k| k.with_cache(|c: &mut Vec<String>| c.push("decrypted flags".into())))
        .unwrap();
    let seen = b
        .with(|k| k.with_cache(|c: &mut Vec<String>| c.clone()))
        .unwrap();
    assert_eq!(
        seen,
        vec!["decrypted flags".to_string()],
        "one cache per keyring"
    );
    env.vault.lock(a.user_id());
    drop((a, b));
    let fresh = env.vault.login("alice", PW, Purpose::Mail).await.unwrap();
    let after = fresh
        .with(|k| k.with_cache(|c: &mut Vec<String>| c.clone()))
        .unwrap();
    assert!(after.is_empty(), "lock now wiped the cache with the keys");
}

#[tokio::test(flavor = "multi_thread")]
async fn old_mail_reopened_by_another_process_appears_at_the_next_login() {
    let env = Env::new(test_config()).await;
    drop(env.create("alice", PW).await);
    let held = env.vault.reset("alice", PW2, inbox).await.unwrap();
    assert!(!held.with(|k| k.has_generation(Generation(1))).unwrap());
    // `coffer user reopen` in another process, while this one keeps the keyring open.
    let cli = env.other_process();
    let s = cli.login("alice", PW2, Purpose::Account).await.unwrap();
    assert_eq!(cli.reopen(&s, PW).await.unwrap(), Generation(1));
    drop(s);
    // The next login here opens the linked generation too, and the open keyring gains it.
    let again = env.vault.login("alice", PW2, Purpose::Mail).await.unwrap();
    assert!(again.with(|k| k.has_generation(Generation(1))).unwrap());
    assert!(
        held.with(|k| k.has_generation(Generation(1))).unwrap(),
        "sessions share the richer keyring"
    );
}
