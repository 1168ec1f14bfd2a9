//! The registry of unlocked keyrings: one per user, shared by all that user's sessions,
//! wiped when the last session ends plus a grace period, or at once by "lock now"
//! (CRYPTO.md, "Keys in memory").
//!
//! The registry also remembers, per unlocked user, keyed hashes of the secrets that
//! opened the keyring, so that a re-login while unlocked skips Argon2id. The hash key is
//! random, lives only here and dies with the entry.

use crate::keyring::Keyring;
use crate::primitives::hmac32;
use crate::secret::Secret32;
use coffer_types::{Generation, SlotKind, UserId};
use std::collections::HashMap;
use std::sync::{Arc, Mutex, RwLock};
use std::time::{Duration, Instant};
use subtle::ConstantTimeEq;

/// The cell all sessions of one user share. Emptied (keys wiped) when locked.
pub struct KeyringCell {
    user: UserId,
    keys: RwLock<Option<Keyring>>,
    /// When this keyring was opened (wall clock, comparable across nodes).
    opened_at: std::time::SystemTime,
}

impl KeyringCell {
    fn wipe(&self) {
        if let Ok(mut k) = self.keys.write() {
            // Dropping the keyring zeroizes every key in it.
            k.take();
        }
    }
}

/// The keyring was locked ("lock now", expiry, or a change by the operator).
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[error("this mailbox was locked; log in again")]
pub struct Locked;

struct Remembered {
    tag: [u8; 32],
    locator: [u8; 32],
    kind: SlotKind,
}

struct Entry {
    cell: Arc<KeyringCell>,
    sessions: usize,
    idle_since: Option<Instant>,
    relogin_key: Secret32,
    remembered: Vec<Remembered>,
    /// Kinds of session currently open, for the panel's overview.
    started: Instant,
}

pub(crate) struct RegistryInner {
    entries: Mutex<HashMap<UserId, Entry>>,
    grace: Duration,
    /// Sessions that said what they are, by session id.
    described: Mutex<HashMap<u64, (UserId, SessionInfo)>>,
}

/// Proof that a user's keyring is open, and a session that keeps it open. Only the vault
/// creates one (after a key slot opened); dropping it ends the session.
pub struct Unlocked {
    cell: Arc<KeyringCell>,
    registry: Arc<RegistryInner>,
    opened_with: SlotKind,
    /// Identifies this session in the registry's list of described sessions.
    id: u64,
}

static NEXT_SESSION_ID: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(1);

fn next_session_id() -> u64 {
    NEXT_SESSION_ID.fetch_add(1, std::sync::atomic::Ordering::Relaxed)
}

/// What a user may see of one of their open sessions (the panel's overview).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SessionInfo {
    /// "IMAP", "panel", ...
    pub kind: &'static str,
    pub address: std::net::IpAddr,
    pub started: std::time::SystemTime,
}

impl Unlocked {
    pub fn user_id(&self) -> &UserId {
        &self.cell.user
    }

    /// Which kind of secret opened this session.
    pub fn opened_with(&self) -> SlotKind {
        self.opened_with
    }

    /// Runs `f` with the keyring, or fails if it was locked meanwhile.
    pub fn with<R>(&self, f: impl FnOnce(&Keyring) -> R) -> Result<R, Locked> {
        let guard = self.cell.keys.read().map_err(|_| Locked)?;
        guard.as_ref().map(f).ok_or(Locked)
    }

    pub(crate) fn with_mut<R>(&self, f: impl FnOnce(&mut Keyring) -> R) -> Result<R, Locked> {
        let mut guard = self.cell.keys.write().map_err(|_| Locked)?;
        guard.as_mut().map(f).ok_or(Locked)
    }

    /// When the keyring this session uses was opened.
    pub fn keyring_opened_at(&self) -> std::time::SystemTime {
        self.cell.opened_at
    }

    /// Records what this session is (kind and client address) for [`Registry::sessions_of`].
    pub fn describe(&self, kind: &'static str, address: std::net::IpAddr) {
        if let Ok(mut d) = self.registry.described.lock() {
            let info = SessionInfo {
                kind,
                address,
                started: std::time::SystemTime::now(),
            };
            d.insert(self.id, (self.cell.user, info));
        }
    }

    pub fn is_locked(&self) -> bool {
        self.cell.keys.read().map(|k| k.is_none()).unwrap_or(true)
    }

    /// Another session on the same keyring (a new IMAP connection of the same user).
    /// Fails once this keyring was locked, even if the user has unlocked a new one since:
    /// a wiped session must never reach keys it did not open.
    pub fn another_session(&self) -> Result<Unlocked, Locked> {
        let reg = Registry {
            inner: self.registry.clone(),
        };
        reg.join_cell(&self.cell, self.opened_with)
    }
}

impl Drop for Unlocked {
    fn drop(&mut self) {
        if let Ok(mut d) = self.registry.described.lock() {
            d.remove(&self.id);
        }
        Registry {
            inner: self.registry.clone(),
        }
        .release(&self.cell.user, &self.cell);
    }
}

/// Summary of one unlocked user, without any key.
#[derive(Debug, Clone)]
pub struct UnlockedInfo {
    pub user: UserId,
    pub sessions: usize,
    pub unlocked_for: Duration,
}

#[derive(Clone)]
pub struct Registry {
    pub(crate) inner: Arc<RegistryInner>,
}

impl Registry {
    pub fn new(grace: Duration) -> Self {
        Registry {
            inner: Arc::new(RegistryInner {
                entries: Mutex::new(HashMap::new()),
                grace,
                described: Mutex::new(HashMap::new()),
            }),
        }
    }

    fn entries(&self) -> std::sync::MutexGuard<'_, HashMap<UserId, Entry>> {
        // A poisoned lock means a panic elsewhere; the map itself is still consistent.
        self.inner.entries.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Opens a session on `keyring`, or on the already open keyring of the same user if its
    /// generation is current (the new keyring is then dropped and wiped).
    pub(crate) fn open(&self, keyring: Keyring, opened_with: SlotKind) -> Unlocked {
        let user = *keyring.user_id();
        let mut entries = self.entries();
        if let Some(e) = entries.get_mut(&user) {
            let same = e
                .cell
                .keys
                .read()
                .ok()
                .and_then(|k| {
                    k.as_ref()
                        .map(|k| k.current_generation() == keyring.current_generation())
                })
                .unwrap_or(false);
            if same {
                // A fresh login may open more generations than the keyring already open
                // (another process reopened old mail meanwhile): keep the richer one, so
                // the reopened mail shows up without waiting for the keyring to expire.
                if let Ok(mut keys) = e.cell.keys.write() {
                    let richer = keys
                        .as_ref()
                        .is_some_and(|k| keyring.generations().any(|g| !k.has_generation(g)));
                    if richer {
                        *keys = Some(keyring);
                    }
                }
                e.sessions += 1;
                e.idle_since = None;
                return Unlocked {
                    cell: e.cell.clone(),
                    registry: self.inner.clone(),
                    opened_with,
                    id: next_session_id(),
                };
            }
            // Stale (the account was reset elsewhere): wipe it and start over.
            e.cell.wipe();
            entries.remove(&user);
        }
        let cell = Arc::new(KeyringCell {
            user,
            opened_at: std::time::SystemTime::now(),
            keys: RwLock::new(Some(keyring)),
        });
        entries.insert(
            user,
            Entry {
                cell: cell.clone(),
                sessions: 1,
                idle_since: None,
                relogin_key: Secret32::random(),
                remembered: Vec::new(),
                started: Instant::now(),
            },
        );
        Unlocked {
            cell,
            registry: self.inner.clone(),
            opened_with,
            id: next_session_id(),
        }
    }

    fn join_cell(
        &self,
        cell: &Arc<KeyringCell>,
        opened_with: SlotKind,
    ) -> Result<Unlocked, Locked> {
        let mut entries = self.entries();
        let e = entries.get_mut(&cell.user).ok_or(Locked)?;
        if !Arc::ptr_eq(&e.cell, cell) {
            return Err(Locked);
        }
        e.sessions += 1;
        e.idle_since = None;
        Ok(Unlocked {
            cell: e.cell.clone(),
            registry: self.inner.clone(),
            opened_with,
            id: next_session_id(),
        })
    }

    fn join(&self, user: &UserId, opened_with: SlotKind) -> Result<Unlocked, Locked> {
        let mut entries = self.entries();
        let e = entries.get_mut(user).ok_or(Locked)?;
        e.sessions += 1;
        e.idle_since = None;
        Ok(Unlocked {
            cell: e.cell.clone(),
            registry: self.inner.clone(),
            opened_with,
            id: next_session_id(),
        })
    }

    fn release(&self, user: &UserId, cell: &Arc<KeyringCell>) {
        let mut entries = self.entries();
        let Some(e) = entries.get_mut(user) else {
            return;
        };
        if !Arc::ptr_eq(&e.cell, cell) {
            return; // a session of an older, already wiped cell
        }
        e.sessions = e.sessions.saturating_sub(1);
        if e.sessions == 0 {
            if self.inner.grace.is_zero() {
                e.cell.wipe();
                entries.remove(user);
            } else {
                e.idle_since = Some(Instant::now());
            }
        }
    }

    /// Remembers a secret that opened `user`'s keyring, for re-login without Argon2id.
    pub(crate) fn remember(&self, user: &UserId, secret: &[u8], locator: [u8; 32], kind: SlotKind) {
        let mut entries = self.entries();
        if let Some(e) = entries.get_mut(user) {
            let tag = hmac32(e.relogin_key.expose(), &[secret]);
            if !e.remembered.iter().any(|r| bool::from(r.tag.ct_eq(&tag))) {
                // Bounded: a user has a handful of secrets; keep the most recent 16.
                if e.remembered.len() >= 16 {
                    e.remembered.remove(0);
                }
                e.remembered.push(Remembered { tag, locator, kind });
            }
        }
    }

    /// If `secret` opened this user's open keyring before, its slot locator and kind.
    pub(crate) fn recall(
        &self,
        user: &UserId,
        secret: &[u8],
    ) -> Option<([u8; 32], SlotKind, Generation)> {
        let entries = self.entries();
        let e = entries.get(user)?;
        let generation = e.cell.keys.read().ok()?.as_ref()?.current_generation();
        let tag = hmac32(e.relogin_key.expose(), &[secret]);
        let mut found = None;
        for r in &e.remembered {
            // Compare every entry so timing does not tell which one matched.
            if bool::from(r.tag.ct_eq(&tag)) {
                found = Some((r.locator, r.kind, generation));
            }
        }
        found
    }

    /// Forgets remembered secrets of a user (after a password change or revocation).
    pub(crate) fn forget_secrets(&self, user: &UserId) {
        if let Some(e) = self.entries().get_mut(user) {
            e.remembered.clear();
        }
    }

    /// Joins the open keyring of `user` as a new session (re-login fast path).
    pub(crate) fn join_existing(&self, user: &UserId, opened_with: SlotKind) -> Option<Unlocked> {
        self.join(user, opened_with).ok()
    }

    /// The described sessions of `user` in this process, oldest first.
    pub fn sessions_of(&self, user: &UserId) -> Vec<SessionInfo> {
        let mut out: Vec<SessionInfo> = match self.inner.described.lock() {
            Ok(d) => d
                .values()
                .filter(|(u, _)| u == user)
                .map(|(_, i)| i.clone())
                .collect(),
            Err(_) => Vec::new(),
        };
        out.sort_by_key(|i| i.started);
        out
    }

    /// "Lock now": wipes the user's keys at once; every session sees [`Locked`].
    pub fn lock(&self, user: &UserId) -> bool {
        if let Ok(mut d) = self.inner.described.lock() {
            d.retain(|_, (u, _)| u != user);
        }
        let mut entries = self.entries();
        match entries.remove(user) {
            Some(e) => {
                e.cell.wipe();
                true
            }
            None => false,
        }
    }

    /// Wipes keyrings idle for longer than the grace period. Returns how many.
    pub fn sweep(&self) -> usize {
        let mut entries = self.entries();
        let grace = self.inner.grace;
        let expired: Vec<UserId> = entries
            .iter()
            .filter(|(_, e)| e.sessions == 0 && e.idle_since.is_some_and(|t| t.elapsed() >= grace))
            .map(|(u, _)| *u)
            .collect();
        for u in &expired {
            if let Some(e) = entries.remove(u) {
                e.cell.wipe();
            }
        }
        expired.len()
    }

    pub fn is_unlocked(&self, user: &UserId) -> bool {
        self.entries().contains_key(user)
    }

    pub fn unlocked(&self) -> Vec<UnlockedInfo> {
        self.entries()
            .iter()
            .map(|(u, e)| UnlockedInfo {
                user: *u,
                sessions: e.sessions,
                unlocked_for: e.started.elapsed(),
            })
            .collect()
    }
}
