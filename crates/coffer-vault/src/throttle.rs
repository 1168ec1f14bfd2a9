//! The failed-login throttle, per user id and per client address (CRYPTO.md: "failed
//! logins are throttled per user id and per client address"), shared by every way in:
//! IMAP, the panel. Each failure doubles the delay before the next answer, from 250 ms up
//! to 15 s; ten quiet minutes forget it.

use coffer_types::UserId;
use std::collections::HashMap;
use std::net::IpAddr;
use std::sync::Mutex;
use std::time::{Duration, Instant};

#[derive(Clone, Copy, PartialEq, Eq, Hash)]
enum Key {
    User(UserId),
    Addr(IpAddr),
}

const FORGET_AFTER: Duration = Duration::from_secs(600);

#[derive(Default)]
pub struct Throttle {
    entries: Mutex<HashMap<Key, (u32, Instant)>>,
}

impl Throttle {
    fn map(&self) -> std::sync::MutexGuard<'_, HashMap<Key, (u32, Instant)>> {
        self.entries.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// The delay owed by an attempt from `addr` for `user`.
    pub fn delay(&self, user: Option<&UserId>, addr: IpAddr) -> Duration {
        let map = self.map();
        let count = |k: Key| {
            map.get(&k)
                .filter(|(_, at)| at.elapsed() < FORGET_AFTER)
                .map(|(n, _)| *n)
                .unwrap_or(0)
        };
        let n = count(Key::Addr(addr)).max(user.map(|u| count(Key::User(*u))).unwrap_or(0));
        if n == 0 {
            return Duration::ZERO;
        }
        Duration::from_millis(250u64.saturating_mul(1 << (n - 1).min(6)))
            .min(Duration::from_secs(15))
    }

    pub fn failed(&self, user: Option<&UserId>, addr: IpAddr) {
        let mut map = self.map();
        if map.len() > 100_000 {
            map.retain(|_, (_, at)| at.elapsed() < FORGET_AFTER);
        }
        let mut bump = |k| {
            let e = map.entry(k).or_insert((0, Instant::now()));
            if e.1.elapsed() >= FORGET_AFTER {
                e.0 = 0;
            }
            e.0 = e.0.saturating_add(1);
            e.1 = Instant::now();
        };
        bump(Key::Addr(addr));
        if let Some(u) = user {
            bump(Key::User(*u));
        }
    }

    pub fn succeeded(&self, user: &UserId, addr: IpAddr) {
        let mut map = self.map();
        map.remove(&Key::User(*user));
        map.remove(&Key::Addr(addr));
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn doubles_and_resets() {
        let t = Throttle::default();
        let u = UserId([7; 32]);
        let a: IpAddr = "127.0.0.1".parse().unwrap();
        assert_eq!(t.delay(Some(&u), a), Duration::ZERO);
        t.failed(Some(&u), a);
        assert_eq!(t.delay(Some(&u), a), Duration::from_millis(250));
        t.failed(Some(&u), a);
        assert_eq!(t.delay(Some(&u), a), Duration::from_millis(500));
        // Another address for the same user still waits.
        let b: IpAddr = "127.0.0.2".parse().unwrap();
        assert_eq!(t.delay(Some(&u), b), Duration::from_millis(500));
        t.succeeded(&u, a);
        assert_eq!(t.delay(Some(&u), a), Duration::ZERO);
    }
}
