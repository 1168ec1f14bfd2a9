//! Panel sessions: random ids in a cookie (Secure, HttpOnly, SameSite=Strict), a random
//! CSRF token each, idle and absolute expiry. A signed-in session holds the user's
//! [`Unlocked`], so it keeps the keyring open like an IMAP session and lets it go when the
//! session ends.

use coffer_types::UserId;
use coffer_vault::Unlocked;
use rand::RngCore;
use std::collections::HashMap;
use std::net::IpAddr;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};
use subtle::ConstantTimeEq;
use zeroize::Zeroizing;

/// The session cookie's name. The `__Host-` prefix makes browsers insist on Secure,
/// Path=/ and no Domain.
pub const SESSION_COOKIE: &str = "__Host-coffer-panel";

/// 32 random bytes as lowercase hex.
pub(crate) fn random_token() -> String {
    let mut b = [0u8; 32];
    rand::rngs::OsRng.fill_bytes(&mut b);
    let mut s = String::with_capacity(64);
    for x in b {
        s.push_str(&format!("{x:02x}"));
    }
    s
}

/// The signed-in part of a session.
pub(crate) struct Auth {
    pub unlocked: Unlocked,
    pub user: UserId,
    /// Kept in memory only, to re-check the password on sensitive forms; never logged.
    pub name: Zeroizing<String>,
}

pub(crate) struct Session {
    pub id: String,
    pub csrf: String,
    pub addr: IpAddr,
    pub started_unix: i64,
    created: Instant,
    last_seen: Mutex<Instant>,
    pub auth: Option<Auth>,
}

impl Session {
    /// Constant-time comparison of a submitted CSRF token with this session's.
    pub fn csrf_ok(&self, submitted: Option<&str>) -> bool {
        match submitted {
            Some(s) => {
                s.len() == self.csrf.len() && bool::from(s.as_bytes().ct_eq(self.csrf.as_bytes()))
            }
            None => false,
        }
    }
}

pub(crate) struct Sessions {
    map: Mutex<HashMap<String, Arc<Session>>>,
    idle: Duration,
    max: Duration,
    cap: usize,
}

fn now_unix() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_secs() as i64)
        .unwrap_or(0)
}

impl Sessions {
    pub fn new(idle: Duration, max: Duration, cap: usize) -> Self {
        Sessions {
            map: Mutex::new(HashMap::new()),
            idle,
            max,
            cap: cap.max(1),
        }
    }

    fn map(&self) -> std::sync::MutexGuard<'_, HashMap<String, Arc<Session>>> {
        self.map.lock().unwrap_or_else(|p| p.into_inner())
    }

    fn expired(&self, s: &Session) -> bool {
        let last = *s.last_seen.lock().unwrap_or_else(|p| p.into_inner());
        last.elapsed() >= self.idle
            || s.created.elapsed() >= self.max
            || s.auth.as_ref().is_some_and(|a| a.unlocked.is_locked())
    }

    /// Starts a session (anonymous, or signed in with `auth`).
    pub fn create(&self, addr: IpAddr, auth: Option<Auth>) -> Arc<Session> {
        let s = Arc::new(Session {
            id: random_token(),
            csrf: random_token(),
            addr,
            started_unix: now_unix(),
            created: Instant::now(),
            last_seen: Mutex::new(Instant::now()),
            auth,
        });
        let mut map = self.map();
        if map.len() >= self.cap {
            map.retain(|_, s| !self.expired(s));
        }
        while map.len() >= self.cap {
            // Evict the oldest anonymous session; failing that, the oldest of all.
            let victim = map
                .values()
                .filter(|s| s.auth.is_none())
                .min_by_key(|s| s.created)
                .or_else(|| map.values().min_by_key(|s| s.created))
                .map(|s| s.id.clone());
            match victim {
                Some(id) => {
                    map.remove(&id);
                }
                None => break,
            }
        }
        map.insert(s.id.clone(), s.clone());
        s
    }

    /// The live session with this id, touched; an expired one is removed and not returned.
    pub fn get(&self, id: &str) -> Option<Arc<Session>> {
        let mut map = self.map();
        let s = map.get(id)?.clone();
        if self.expired(&s) {
            map.remove(id);
            return None;
        }
        *s.last_seen.lock().unwrap_or_else(|p| p.into_inner()) = Instant::now();
        Some(s)
    }

    pub fn remove(&self, id: &str) {
        self.map().remove(id);
    }

    /// Ends every panel session of `user` (after "lock now" or a reset).
    pub fn remove_user(&self, user: &UserId) {
        self.map()
            .retain(|_, s| s.auth.as_ref().is_none_or(|a| &a.user != user));
    }

    /// Panel sessions of `user`: client address and start (unix seconds).
    pub fn of_user(&self, user: &UserId) -> Vec<(IpAddr, i64)> {
        let mut v: Vec<(IpAddr, i64)> = self
            .map()
            .values()
            .filter(|s| s.auth.as_ref().is_some_and(|a| &a.user == user) && !self.expired(s))
            .map(|s| (s.addr, s.started_unix))
            .collect();
        v.sort_by_key(|(_, t)| *t);
        v
    }

    /// The keyring handles of signed-in sessions, to check for a lock made elsewhere.
    pub fn signed_in_handles(&self) -> Vec<Arc<Session>> {
        self.map()
            .values()
            .filter(|s| s.auth.is_some())
            .cloned()
            .collect()
    }

    pub fn signed_in(&self) -> usize {
        self.map().values().filter(|s| s.auth.is_some()).count()
    }

    /// Drops expired sessions (and with them their keyring references).
    pub fn sweep(&self) {
        let expired: Vec<Arc<Session>> = {
            let mut map = self.map();
            let ids: Vec<String> = map
                .iter()
                .filter(|(_, s)| self.expired(s))
                .map(|(id, _)| id.clone())
                .collect();
            ids.iter().filter_map(|id| map.remove(id)).collect()
        };
        // Dropped outside the lock: dropping an Unlocked takes the registry's lock.
        drop(expired);
    }

    pub fn clear(&self) {
        let all: Vec<Arc<Session>> = self.map().drain().map(|(_, s)| s).collect();
        drop(all);
    }
}
