//! Change notifications between sessions of one user in this process: every write through
//! [`crate::Mail`] (and delivery through [`crate::Mail::deliver`]) announces the mailbox it
//! changed, so IDLE sessions can tell their clients at once. Changes made by other
//! processes (another node, the CLI) are found by the server's watcher of
//! `Store::data_version`, which calls [`Changes::notify_external`]; sessions compare
//! [`Changes::external_epoch`] with the one they last checked at to know whether they must
//! read the store again.

use coffer_types::{MailboxId, UserId};
use std::collections::HashMap;
use std::sync::Mutex;
use std::sync::atomic::{AtomicU64, Ordering};
use tokio::sync::broadcast;

/// Capacity of each user's channel; a session that lags behind resynchronises fully.
const CHANNEL_CAPACITY: usize = 256;

pub struct Changes {
    senders: Mutex<HashMap<UserId, broadcast::Sender<MailboxId>>>,
    /// "Something changed outside this process": every session re-checks its mailbox.
    external: broadcast::Sender<()>,
    /// How many times another process's commit was seen.
    epoch: AtomicU64,
}

impl Default for Changes {
    fn default() -> Self {
        Changes {
            senders: Mutex::new(HashMap::new()),
            external: broadcast::channel(16).0,
            epoch: AtomicU64::new(0),
        }
    }
}

impl Changes {
    pub fn subscribe(&self, user: &UserId) -> broadcast::Receiver<MailboxId> {
        let mut map = self.senders.lock().unwrap_or_else(|p| p.into_inner());
        map.entry(*user)
            .or_insert_with(|| broadcast::channel(CHANNEL_CAPACITY).0)
            .subscribe()
    }

    pub fn subscribe_external(&self) -> broadcast::Receiver<()> {
        self.external.subscribe()
    }

    /// Announces that another process changed the store.
    pub fn notify_external(&self) {
        self.epoch.fetch_add(1, Ordering::AcqRel);
        let _ = self.external.send(());
    }

    /// Grows with every [`Changes::notify_external`]: a session that read the store at
    /// epoch `e` has seen every other process's commit announced before `e`.
    pub fn external_epoch(&self) -> u64 {
        self.epoch.load(Ordering::Acquire)
    }

    pub fn notify(&self, user: &UserId, mailbox: MailboxId) {
        let mut map = self.senders.lock().unwrap_or_else(|p| p.into_inner());
        if let Some(tx) = map.get(user)
            && tx.send(mailbox).is_err()
        {
            // Nobody listens any more.
            map.remove(user);
        }
    }
}
