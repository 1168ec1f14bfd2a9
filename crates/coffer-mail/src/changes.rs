//! Change notifications between sessions of one user in this process: every write through
//! [`crate::Mail`] (and delivery through [`crate::Mail::deliver`]) announces the mailbox it
//! changed, so IDLE sessions can tell their clients at once. Changes made by other
//! processes are found by the sessions' periodic check of the mailbox counters.

use coffer_types::{MailboxId, UserId};
use std::collections::HashMap;
use std::sync::Mutex;
use tokio::sync::broadcast;

/// Capacity of each user's channel; a session that lags behind resynchronises fully.
const CHANNEL_CAPACITY: usize = 256;

pub struct Changes {
    senders: Mutex<HashMap<UserId, broadcast::Sender<MailboxId>>>,
    /// "Something changed outside this process": every session re-checks its mailbox.
    external: broadcast::Sender<()>,
}

impl Default for Changes {
    fn default() -> Self {
        Changes {
            senders: Mutex::new(HashMap::new()),
            external: broadcast::channel(16).0,
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
        let _ = self.external.send(());
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
