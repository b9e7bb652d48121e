//! How a client is opened, and the merge policies an app can seed.

use std::collections::BTreeSet;

use tandem_core::Durability;
use tandem_protocol::{CollectionPolicy as CorePolicy, Policy};

/// Everything [`Client::open`](crate::Client::open) needs.
#[derive(Clone, PartialEq, Eq, uniffi::Record)]
pub struct ClientConfig {
    /// The directory holding the device's database (created if missing).
    /// The same directory is the same device across runs: put it in the
    /// app's private storage, not in a cache directory.
    pub data_dir: String,
    /// The user this device belongs to; fixed when the directory is first
    /// used.
    pub user_id: String,
    /// A name for people ("Alice's iPad"); it may change between runs.
    pub device_name: String,
    /// Whether every commit is flushed to disk (an fsync per write), so a
    /// write that returned survives power loss too. By default a write
    /// survives the app being killed, which is what mobile OSes do all the
    /// time, and costs no fsync.
    #[uniffi(default = false)]
    pub durable_writes: bool,
    /// The largest document, in bytes of its merge state as JSON; none
    /// means 1 MiB.
    #[uniffi(default = None)]
    pub max_document_bytes: Option<u64>,
    /// A budget for the database's size, in bytes; none means no limit.
    /// Over it, documents of `evictable_collections` are evicted, least
    /// recently used first (never ones with pending writes);
    /// [`Client::fetch`](crate::Client::fetch) gets one again.
    #[uniffi(default = None)]
    pub cache_limit_bytes: Option<u64>,
    /// Collections whose documents may be evicted to keep within
    /// `cache_limit_bytes` (for example message history).
    #[uniffi(default = [])]
    pub evictable_collections: Vec<String>,
    /// A 32-byte key that encrypts the database (SQLCipher, AES-256);
    /// none keeps it plain SQLite. Generate 32 random bytes once and keep
    /// them in the Keychain or the Android Keystore: the key is used as it
    /// is. Opening with another key fails with `InvalidInput`
    /// (`wrong_key`) and changes nothing; `change_encryption_key` changes
    /// it.
    #[uniffi(default = None)]
    pub encryption_key: Option<Vec<u8>>,
}

impl std::fmt::Debug for ClientConfig {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        // Never the key.
        f.debug_struct("ClientConfig")
            .field("data_dir", &self.data_dir)
            .field("user_id", &self.user_id)
            .field("device_name", &self.device_name)
            .field("encrypted", &self.encryption_key.is_some())
            .finish_non_exhaustive()
    }
}

/// A key given as bytes, checked.
pub(crate) fn database_key(
    bytes: Option<Vec<u8>>,
) -> Result<Option<tandem_core::DatabaseKey>, tandem_core::Error> {
    bytes.map(|b| tandem_core::DatabaseKey::new(&b)).transpose()
}

impl TryFrom<ClientConfig> for tandem_core::ClientConfig {
    type Error = tandem_core::Error;

    fn try_from(config: ClientConfig) -> Result<tandem_core::ClientConfig, tandem_core::Error> {
        // Built from the core's defaults, so options the core adds keep
        // their defaults here until the app is given a say.
        let mut core =
            tandem_core::ClientConfig::new(&config.data_dir, &config.user_id, &config.device_name);
        if config.durable_writes {
            core.durability = Durability::Full;
        }
        if let Some(bytes) = config.max_document_bytes {
            core.max_document_bytes = usize::try_from(bytes).unwrap_or(usize::MAX);
        }
        core.cache_limit_bytes = config.cache_limit_bytes;
        core.evictable_collections = config.evictable_collections;
        core.encryption_key = database_key(config.encryption_key)?;
        Ok(core)
    }
}

/// How concurrent writes to a collection's documents are resolved.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, uniffi::Enum)]
pub enum MergePolicy {
    /// Field-level last-writer-wins (the default).
    Lww,
    /// A write must be based on the current version, or the server's
    /// document wins.
    ServerWins,
    /// Documents are created once and never changed (set fields excepted).
    AppendOnly,
    /// Conflicts are handed to the app's conflict handler.
    Manual,
}

/// A collection's merge policy and its set fields. The server announces
/// the policies; an app seeds the ones it ships with so a device that has
/// never synced merges the same way.
#[derive(Debug, Clone, PartialEq, Eq, uniffi::Record)]
pub struct CollectionPolicy {
    /// The merge policy.
    pub policy: MergePolicy,
    /// Fields that are observed-remove sets, changed only by `set_add` and
    /// `set_remove`.
    #[uniffi(default = [])]
    pub set_fields: Vec<String>,
}

impl From<CollectionPolicy> for CorePolicy {
    fn from(policy: CollectionPolicy) -> CorePolicy {
        CorePolicy {
            policy: match policy.policy {
                MergePolicy::Lww => Policy::Lww,
                MergePolicy::ServerWins => Policy::ServerWins,
                MergePolicy::AppendOnly => Policy::AppendOnly,
                MergePolicy::Manual => Policy::Manual,
            },
            set_fields: policy.set_fields.into_iter().collect::<BTreeSet<_>>(),
        }
    }
}
