//! Syncing with a server: its configuration and outcomes, and shared
//! spaces.

/// How to reach the sync server ([`Client::start_sync`](crate::Client::start_sync)).
#[derive(Debug, Clone, PartialEq, Eq, uniffi::Record)]
pub struct SyncConfig {
    /// The server's base URL, `https://host[:port]` (or `http://` for a
    /// local development server).
    pub server_url: String,
    /// The platform the device reports; none reports the OS (`ios`,
    /// `android`, `macos`, …).
    #[uniffi(default = None)]
    pub platform: Option<String>,
    /// The app's version, as the device reports it in the device list.
    #[uniffi(default = None)]
    pub app_version: Option<String>,
}

impl From<SyncConfig> for tandem_core::SyncConfig {
    fn from(config: SyncConfig) -> tandem_core::SyncConfig {
        let mut core = tandem_core::SyncConfig::new(&config.server_url);
        if let Some(platform) = config.platform {
            core.platform = platform;
        }
        if let Some(app_version) = config.app_version {
            core.app_version = app_version;
        }
        core
    }
}

/// How a bounded sync ([`Client::sync_once`](crate::Client::sync_once))
/// ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq, uniffi::Enum)]
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

impl From<tandem_core::SyncOutcome> for SyncOutcome {
    fn from(outcome: tandem_core::SyncOutcome) -> SyncOutcome {
        match outcome {
            tandem_core::SyncOutcome::CaughtUp => SyncOutcome::CaughtUp,
            tandem_core::SyncOutcome::PendingLeft { pending, failed } => {
                SyncOutcome::PendingLeft { pending, failed }
            }
        }
    }
}

/// A space and its members, as the server lists them.
#[derive(Debug, Clone, PartialEq, Eq, uniffi::Record)]
pub struct SpaceInfo {
    /// The space's id (`personal:<user>` or a shared space's name).
    pub space: String,
    /// Its owner.
    pub owner: String,
    /// Its members, sorted (empty in `spaces()`, which lists spaces only).
    pub members: Vec<String>,
}

impl From<tandem_core::SpaceInfo> for SpaceInfo {
    fn from(info: tandem_core::SpaceInfo) -> SpaceInfo {
        SpaceInfo {
            space: info.space,
            owner: info.owner,
            members: info.members,
        }
    }
}
