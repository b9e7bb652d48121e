//! The sync status, failed writes and the conflict log.

use std::sync::{Arc, PoisonError};

use super::{Client, parse_mutation_id};
use crate::error::Error;
use crate::observe::Subscription;
use crate::store::{ConflictRecord, OutboxState, PendingMutation};
use crate::sync::{ConflictHandler, ConnectionState, StatusObserver, SyncStatus};

impl Client {
    /// The whole sync status: connection, outbox counts, last synced time,
    /// cursors, catch-up progress, checksum mismatches, the last error.
    pub fn status(&self) -> Result<SyncStatus, Error> {
        self.ensure_open()?;
        let (pending, failed) = self.store.outbox_counts()?;
        let (last_synced, checksum_mismatches) = self.store.sync_marks()?;
        let cursors = self
            .store
            .cursors()?
            .into_iter()
            .map(|(space, cursor)| (space, cursor.rev))
            .collect();
        let live = self.live.status();
        Ok(SyncStatus {
            connection: live
                .as_ref()
                .map_or(ConnectionState::Offline, |s| s.connection),
            pending,
            failed,
            last_synced,
            cursors,
            catching_up: live
                .as_ref()
                .map(|s| s.catching_up.clone())
                .unwrap_or_default(),
            checksum_mismatches,
            last_error: live.and_then(|s| s.last_error),
        })
    }

    /// Calls `observer` with the sync status now and each time it changes,
    /// and with each mutation that fails, until the subscription is
    /// cancelled or dropped.
    pub fn observe_status(&self, observer: Arc<dyn StatusObserver>) -> Result<Subscription, Error> {
        self.ensure_open()?;
        // Registered first: a status published from here on reaches it
        // too, after the current one it gets now.
        let id = self.live.add_status_observer(Arc::clone(&observer));
        match self.status() {
            Ok(status) => observer.on_status(status),
            Err(e) => {
                self.live.remove_observer(id);
                return Err(e);
            }
        }
        let live = Arc::downgrade(&self.live);
        Ok(Subscription::from_cancel(move || {
            if let Some(live) = live.upgrade() {
                live.remove_observer(id);
            }
        }))
    }

    /// The outbox entries the server refused (or whose attempts ran out),
    /// in seq order.
    pub fn failed_mutations(&self) -> Result<Vec<PendingMutation>, Error> {
        Ok(self
            .store
            .pending_mutations()?
            .into_iter()
            .filter(|m| matches!(m.state, OutboxState::Failed { .. }))
            .collect())
    }

    /// Queues a failed mutation again (its effect returns to the view).
    /// Returns whether a failed entry with this id existed.
    pub fn retry_mutation(&self, mutation_id: &str) -> Result<bool, Error> {
        let id = parse_mutation_id(mutation_id)?;
        let retried = self.store.retry_failed(&id)?;
        self.notify_local_write();
        Ok(retried)
    }

    /// Deletes an outbox entry, failed or not, and rebuilds its document's
    /// view without it. Returns whether it existed.
    pub fn discard_mutation(&self, mutation_id: &str) -> Result<bool, Error> {
        let id = parse_mutation_id(mutation_id)?;
        self.store.discard(&id)
    }

    /// The newest `limit` resolved conflicts, newest first.
    pub fn conflicts(&self, limit: u32) -> Result<Vec<ConflictRecord>, Error> {
        self.store.conflicts(limit)
    }

    /// Sets (or, with `None`, removes) the handler of conflicts in
    /// `server_wins` and `manual` collections (see
    /// [`crate::sync::conflict`]).
    pub fn set_conflict_handler(&self, handler: Option<Arc<dyn ConflictHandler>>) {
        *self
            .conflicts
            .write()
            .unwrap_or_else(PoisonError::into_inner) = handler;
    }
}

#[cfg(test)]
mod tests {
    use std::sync::{Arc, Mutex};

    use crate::background::HostDriven;
    use crate::sync::{ConnectionState, StatusObserver, SyncStatus};
    use crate::{Client, ClientConfig};

    #[derive(Default)]
    struct Seen(Mutex<Vec<ConnectionState>>);

    impl StatusObserver for Seen {
        fn on_status(&self, status: SyncStatus) {
            self.0.lock().unwrap().push(status.connection);
        }
    }

    #[test]
    fn a_new_status_observer_hears_nothing_older_than_its_first_status() {
        let dir = tempfile::tempdir().unwrap();
        let runner = Arc::new(HostDriven::new(|| {}));
        let mut config = ClientConfig::new(dir.path().to_str().unwrap(), "alice", "phone");
        config.background = runner.clone();
        let client = Client::open(config).unwrap();
        let mut status = client.status().unwrap();

        // Published, not yet delivered, when the observer subscribes.
        status.connection = ConnectionState::Connecting;
        client.live.publish_status(status.clone());
        let seen = Arc::new(Seen::default());
        let _subscription = client.observe_status(seen.clone()).unwrap();
        runner.run_pending();
        assert_eq!(*seen.0.lock().unwrap(), vec![ConnectionState::Connecting]);

        // Published after: delivered on the host's next turn.
        status.connection = ConnectionState::Online;
        client.live.publish_status(status);
        assert_eq!(seen.0.lock().unwrap().len(), 1);
        runner.run_pending();
        assert_eq!(
            *seen.0.lock().unwrap(),
            vec![ConnectionState::Connecting, ConnectionState::Online]
        );
    }
}
