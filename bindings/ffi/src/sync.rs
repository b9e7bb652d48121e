//! Syncing with a server: its configuration and outcomes, and shared
//! spaces.

/// How to reach the sync server ([`Client::start_sync`](crate::Client::start_sync)).
#[derive(Debug, Clone, PartialEq, uniffi::Record)]
pub struct SyncConfig {
    /// The server: `https://host[:port]` (or `http://` for a local
    /// development server); the `wss://` and `ws://` forms of the same
    /// address mean the same server. Another scheme or a malformed URL
    /// fails `start_sync` at once with `InvalidInput` (`invalid_config`).
    pub server_url: String,
    /// The platform the device reports; none reports the OS (`ios`,
    /// `android`, `macos`, …).
    #[uniffi(default = None)]
    pub platform: Option<String>,
    /// The app's version, as the device reports it in the device list.
    #[uniffi(default = None)]
    pub app_version: Option<String>,
    /// Extra root certificates to trust for an `https://` server, each a
    /// PEM text of one or more certificates: a private CA, or a test CA.
    /// The platform's own trust applies as well (iOS and macOS: the
    /// system's; Android: the bundled Mozilla set).
    #[uniffi(default = [])]
    pub trusted_roots_pem: Vec<String>,
    /// Public-key pins: SHA-256 hashes of a certificate's
    /// `SubjectPublicKeyInfo` in base64 (`sha256/…`) or hex. When given,
    /// the server's chain must also hold one of these keys. Pin a backup
    /// key too, or a key rotation locks the app out.
    #[uniffi(default = [])]
    pub pinned_spki_sha256: Vec<String>,
    /// Timings and limits of the engine; none means the documented
    /// defaults ([`SyncTuning::default`]).
    #[uniffi(default = None)]
    pub tuning: Option<SyncTuning>,
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
        core.tls = tandem_core::TlsSettings {
            trusted_roots_pem: config.trusted_roots_pem,
            pinned_spki_sha256: config.pinned_spki_sha256,
        };
        if let Some(tuning) = config.tuning {
            core.tuning = tuning.into();
        }
        core
    }
}

/// The sync engine's timings and limits. Every field has the documented
/// default; change one to suit the platform (a shorter reconnect cap for a
/// chat app in the foreground, fewer attempts before a write fails).
#[derive(Debug, Clone, PartialEq, uniffi::Record)]
pub struct SyncTuning {
    /// The first wait before reconnecting, in ms; it doubles after each
    /// failure (plus up to a fifth at random).
    #[uniffi(default = 500)]
    pub reconnect_initial_ms: u64,
    /// The longest wait before reconnecting, in ms.
    #[uniffi(default = 30000)]
    pub reconnect_max_ms: u64,
    /// The first wait before sending a mutation again after a failed send,
    /// in ms; it doubles after each failure.
    #[uniffi(default = 1000)]
    pub retry_initial_ms: u64,
    /// The longest wait before sending a mutation again, in ms.
    #[uniffi(default = 60000)]
    pub retry_max_ms: u64,
    /// Sends of one mutation before it fails for good.
    #[uniffi(default = 10)]
    pub max_attempts: u32,
    /// Send `ping` after this long without receiving anything, in ms.
    #[uniffi(default = 20000)]
    pub ping_after_ms: u64,
    /// Drop the connection after this long without receiving anything, in
    /// ms.
    #[uniffi(default = 60000)]
    pub dead_after_ms: u64,
    /// A batch not answered within this long is sent again on a new
    /// connection, in ms.
    #[uniffi(default = 30000)]
    pub ack_timeout_ms: u64,
    /// Batches sent and not yet answered, at most.
    #[uniffi(default = 8)]
    pub max_outstanding_batches: u32,
    /// Mutations per batch, at most (the server's limit applies too).
    #[uniffi(default = 500)]
    pub max_batch: u32,
    /// Refresh the access token when this fraction of its lifetime has
    /// passed.
    #[uniffi(default = 0.8)]
    pub refresh_at_fraction: f64,
    /// How often a role holder renews its leases, in ms.
    #[uniffi(default = 500)]
    pub role_renew_interval_ms: u64,
}

impl Default for SyncTuning {
    fn default() -> SyncTuning {
        tandem_core::SyncTuning::default().into()
    }
}

impl From<SyncTuning> for tandem_core::SyncTuning {
    fn from(t: SyncTuning) -> tandem_core::SyncTuning {
        use std::time::Duration;
        let ms = Duration::from_millis;
        tandem_core::SyncTuning {
            reconnect: tandem_core::sync::Backoff {
                base: ms(t.reconnect_initial_ms),
                cap: ms(t.reconnect_max_ms),
            },
            retry: tandem_core::sync::Backoff {
                base: ms(t.retry_initial_ms),
                cap: ms(t.retry_max_ms),
            },
            max_attempts: t.max_attempts,
            ping_after: ms(t.ping_after_ms),
            dead_after: ms(t.dead_after_ms),
            ack_timeout: ms(t.ack_timeout_ms),
            max_outstanding_batches: usize::try_from(t.max_outstanding_batches)
                .unwrap_or(usize::MAX),
            max_batch: usize::try_from(t.max_batch).unwrap_or(usize::MAX),
            refresh_at_fraction: t.refresh_at_fraction,
            role_renew_interval: ms(t.role_renew_interval_ms),
        }
    }
}

impl From<tandem_core::SyncTuning> for SyncTuning {
    fn from(t: tandem_core::SyncTuning) -> SyncTuning {
        let ms = |d: std::time::Duration| u64::try_from(d.as_millis()).unwrap_or(u64::MAX);
        SyncTuning {
            reconnect_initial_ms: ms(t.reconnect.base),
            reconnect_max_ms: ms(t.reconnect.cap),
            retry_initial_ms: ms(t.retry.base),
            retry_max_ms: ms(t.retry.cap),
            max_attempts: t.max_attempts,
            ping_after_ms: ms(t.ping_after),
            dead_after_ms: ms(t.dead_after),
            ack_timeout_ms: ms(t.ack_timeout),
            max_outstanding_batches: u32::try_from(t.max_outstanding_batches).unwrap_or(u32::MAX),
            max_batch: u32::try_from(t.max_batch).unwrap_or(u32::MAX),
            refresh_at_fraction: t.refresh_at_fraction,
            role_renew_interval_ms: ms(t.role_renew_interval),
        }
    }
}

/// The engine's documented defaults, as a starting point to change.
#[uniffi::export]
pub fn default_sync_tuning() -> SyncTuning {
    SyncTuning::default()
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The defaults the bindings declare for Swift and Kotlin (the
    /// `#[uniffi(default = …)]` values) are the core's.
    #[test]
    fn the_declared_defaults_are_the_cores() {
        let declared = SyncTuning {
            reconnect_initial_ms: 500,
            reconnect_max_ms: 30_000,
            retry_initial_ms: 1_000,
            retry_max_ms: 60_000,
            max_attempts: 10,
            ping_after_ms: 20_000,
            dead_after_ms: 60_000,
            ack_timeout_ms: 30_000,
            max_outstanding_batches: 8,
            max_batch: 500,
            refresh_at_fraction: 0.8,
            role_renew_interval_ms: 500,
        };
        assert_eq!(declared, SyncTuning::default());
        assert_eq!(
            tandem_core::SyncTuning::from(declared),
            tandem_core::SyncTuning::default()
        );
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
