//! Starting, stopping and nudging sync (the native driver).

use std::sync::Arc;
use std::time::Duration;

use serde::Serialize;

use super::{Client, lock};
use crate::clock::SystemClock;
use crate::error::Error;
use crate::sync::access::{Access, DeviceLabel};
use crate::sync::driver::{Settling, SyncHandle};
use crate::sync::endpoint::Endpoint;
use crate::sync::engine::Engine;
use crate::sync::interface::Event;
use crate::sync::{ConnectionState, SeededJitter, SyncConfig, SyncErrorKind, TokenProvider};

/// How a bounded sync ([`Client::sync_once`]) ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(tag = "result", rename_all = "snake_case")]
pub enum SyncOutcome {
    /// Caught up with every space, and the outbox is empty.
    CaughtUp,
    /// Time ran out, or entries remain that cannot be sent now (retrying
    /// later, or failed).
    PendingLeft {
        /// Entries not yet confirmed.
        pending: u64,
        /// Failed entries.
        failed: u64,
    },
}

impl Client {
    /// Starts syncing with the server in `config` on the current tokio
    /// runtime: registers the device if it has no credentials (with a user
    /// token from `tokens`), connects, catches up, pushes the outbox, and
    /// keeps doing so (reconnecting with backoff) until
    /// [`Client::stop_sync`] or [`Client::close`]. Starting again replaces
    /// the running sync.
    ///
    /// The server URL and the TLS settings are checked first: a bad one is
    /// [`Error::InvalidConfig`] at once, and the running sync (if any) is
    /// left as it was.
    pub async fn start_sync(
        &self,
        config: SyncConfig,
        tokens: Arc<dyn TokenProvider>,
    ) -> Result<(), Error> {
        self.ensure_open()?;
        let endpoint = Endpoint::parse(&config.server_url)?;
        let tls = config.tls.check()?;
        self.stop_sync().await;
        let engine = Engine::new(
            Arc::clone(&self.store),
            config.tuning.clone(),
            Arc::new(SystemClock),
            Box::new(SeededJitter::from_entropy()),
        )?;
        let access = Arc::new(Access::new(
            Arc::clone(&self.store),
            self.credentials.clone(),
            &endpoint,
            &tls,
            tokens,
            DeviceLabel {
                name: self.device_name.clone(),
                platform: config.platform.clone(),
                app_version: config.app_version.clone(),
            },
        )?);
        let handle = SyncHandle::start(
            engine,
            access,
            Arc::clone(&self.live),
            Arc::clone(&self.conflicts),
        );
        if !self
            .network_available
            .load(std::sync::atomic::Ordering::SeqCst)
        {
            handle.send(Event::NetworkChanged(false));
        }
        *lock(&self.sync) = Some(Arc::new(handle));
        Ok(())
    }

    /// Stops syncing (closing the connection). Local use goes on.
    pub async fn stop_sync(&self) {
        let handle = lock(&self.sync).take();
        if let Some(handle) = handle {
            handle.stop().await;
        }
        self.live.clear();
    }

    /// Whether [`Client::start_sync`] is in effect.
    pub fn is_syncing(&self) -> bool {
        lock(&self.sync).is_some()
    }

    pub(crate) fn sync_handle(&self) -> Result<Arc<SyncHandle>, Error> {
        lock(&self.sync).clone().ok_or(Error::NotSyncing)
    }

    /// Connects now if offline (resetting the backoff) and sends what can be
    /// sent. Does nothing if syncing is not started.
    pub fn sync_now(&self) {
        if let Ok(handle) = self.sync_handle() {
            handle.send(Event::SyncNow);
        }
    }

    /// Tells the engine whether the host has a network. `false` closes the
    /// connection and stops reconnect attempts; `true` connects at once
    /// with the backoff reset. Kept across [`Client::start_sync`].
    pub fn set_network_available(&self, available: bool) {
        self.network_available
            .store(available, std::sync::atomic::Ordering::SeqCst);
        if let Ok(handle) = self.sync_handle() {
            handle.send(Event::NetworkChanged(available));
        }
    }

    /// A bounded sync for background tasks: connects if needed, pushes the
    /// outbox and pulls until caught up, and returns when nothing more can
    /// be done now or after `timeout`. Needs [`Client::start_sync`] first;
    /// syncing keeps running afterwards (stop it with
    /// [`Client::stop_sync`] when the background task ends).
    ///
    /// An error that retrying within `timeout` cannot mend ends it at once:
    /// [`Error::Tls`] (the server's certificate is not trusted),
    /// [`Error::Unauthorized`]. Unreachable servers are retried with
    /// backoff until `timeout`, then [`Error::Network`].
    pub async fn sync_once(&self, timeout: Duration) -> Result<SyncOutcome, Error> {
        let handle = self.sync_handle()?;
        handle.send(Event::SyncNow);
        let end = handle.wait_settled(timeout).await;
        let status = self.status()?;
        if end != Settling::Settled
            && status.connection != ConnectionState::Online
            && let Some(error) = status.last_error
        {
            return Err(match error.kind {
                SyncErrorKind::Unauthorized => Error::Unauthorized(error.message),
                SyncErrorKind::Tls => Error::Tls(error.message),
                SyncErrorKind::Network => Error::Network(error.message),
                _ => Error::Network(error.to_string()),
            });
        }
        Ok(
            if end == Settling::Settled && status.pending == 0 && status.failed == 0 {
                SyncOutcome::CaughtUp
            } else {
                SyncOutcome::PendingLeft {
                    pending: status.pending,
                    failed: status.failed,
                }
            },
        )
    }
}
