//! How a [`Client`](crate::Client) is opened.

use std::sync::Arc;

use crate::background::{Background, Threads};
use crate::credentials::CredentialStore;
use crate::error::Error;

/// The name of the database file inside the data directory.
pub const DATABASE_FILE: &str = "tandem.db";

/// The default limit on a document's size: 1 MiB.
pub const DEFAULT_MAX_DOCUMENT_BYTES: usize = 1024 * 1024;

/// What a committed local write survives.
///
/// Both modes keep the database consistent whatever happens (SQLite's WAL
/// guarantees atomic commits); they differ only in how recent the surviving
/// state is after the machine, not just the app, goes down.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Hash)]
pub enum Durability {
    /// `PRAGMA synchronous = NORMAL`: a commit is a write to the WAL without
    /// an fsync. It survives the app crashing or being killed; after a power
    /// loss or an OS crash the last commits before it may be gone (the
    /// outbox entries with them, so nothing half-synced remains). The WAL is
    /// fsynced at every checkpoint. This is the default: a mobile OS kills
    /// apps all the time but rarely loses power with dirty pages, and an
    /// fsync per write costs milliseconds on phone flash.
    #[default]
    Normal,
    /// `PRAGMA synchronous = FULL`: every commit fsyncs the WAL, so a write
    /// that returned survives power loss too. Each write then costs an
    /// fsync.
    Full,
}

impl Durability {
    /// The value of `PRAGMA synchronous` for this mode.
    pub fn synchronous_pragma(self) -> &'static str {
        match self {
            Durability::Normal => "NORMAL",
            Durability::Full => "FULL",
        }
    }
}

/// Everything [`Client::open`](crate::Client::open) needs.
#[derive(Clone)]
pub struct ClientConfig {
    /// The directory holding the device's database ([`DATABASE_FILE`]); it is
    /// created if missing. The same directory is the same device across
    /// runs.
    pub data_dir: String,
    /// The user this device belongs to. Fixed when the directory is first
    /// used; opening it for another user fails.
    pub user_id: String,
    /// A name for this device, for people ("Alice's iPad"). It may change
    /// between runs; the device id does not.
    pub device_name: String,
    /// What a committed write survives.
    pub durability: Durability,
    /// The largest document, in bytes of its merge state as JSON (what the
    /// server limits too). Default: 1 MiB.
    pub max_document_bytes: usize,
    /// A budget for the database's size, in bytes; `None` (the default):
    /// no limit. Over it, documents of [`Self::evictable_collections`] are
    /// evicted, least recently used first (see the store's eviction
    /// module).
    pub cache_limit_bytes: Option<u64>,
    /// Collections whose documents may be evicted to keep within
    /// [`Self::cache_limit_bytes`] and fetched again when needed. Default:
    /// none.
    pub evictable_collections: Vec<String>,
    /// The key the database is encrypted with (SQLCipher); `None` (the
    /// default) keeps it plain SQLite. See [`DatabaseKey`].
    pub encryption_key: Option<DatabaseKey>,
    /// Where the device's access and refresh tokens are kept: `None` (the
    /// default) keeps them in the database; an app gives the platform's
    /// secret store (see [`crate::credentials`]).
    pub credential_store: Option<Arc<dyn CredentialStore>>,
    /// Who runs the client's background work (checkpoints, observer and
    /// status deliveries): a thread per task by default; a single-threaded
    /// host passes a [`HostDriven`](crate::background::HostDriven) and
    /// runs it on its own turn.
    pub background: Arc<dyn Background>,
}

impl std::fmt::Debug for ClientConfig {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ClientConfig")
            .field("data_dir", &self.data_dir)
            .field("user_id", &self.user_id)
            .field("device_name", &self.device_name)
            .field("durability", &self.durability)
            .field("max_document_bytes", &self.max_document_bytes)
            .field("cache_limit_bytes", &self.cache_limit_bytes)
            .field("evictable_collections", &self.evictable_collections)
            .field("encrypted", &self.encryption_key.is_some())
            .field("credential_store", &self.credential_store.is_some())
            .field("background", &"..")
            .finish_non_exhaustive()
    }
}

impl ClientConfig {
    /// A configuration with the defaults: [`Durability::Normal`], 1 MiB
    /// documents, no server.
    pub fn new(data_dir: &str, user_id: &str, device_name: &str) -> ClientConfig {
        ClientConfig {
            data_dir: data_dir.to_owned(),
            user_id: user_id.to_owned(),
            device_name: device_name.to_owned(),
            durability: Durability::Normal,
            max_document_bytes: DEFAULT_MAX_DOCUMENT_BYTES,
            cache_limit_bytes: None,
            evictable_collections: Vec::new(),
            encryption_key: None,
            credential_store: None,
            background: Arc::new(Threads),
        }
    }
}

/// A 256-bit key that encrypts the device's database with SQLCipher
/// (AES-256, a random salt in the file, an HMAC on every page).
///
/// The key is used as it is, with no key derivation: generate 32 random
/// bytes once (`SecRandomCopyBytes`, `SecureRandom`) and keep them where
/// the platform keeps secrets (the Keychain, the Android Keystore), like
/// the device's credentials. Opening with another key fails with
/// [`Error::WrongKey`]; [`crate::Client::change_encryption_key`] changes it.
#[derive(Clone, PartialEq, Eq)]
pub struct DatabaseKey([u8; 32]);

impl DatabaseKey {
    /// The key in `bytes`, which must be 32 long.
    pub fn new(bytes: &[u8]) -> Result<DatabaseKey, Error> {
        <[u8; 32]>::try_from(bytes).map(DatabaseKey).map_err(|_| {
            Error::InvalidConfig(format!(
                "a database key is 32 bytes, not {}: generate 32 random bytes",
                bytes.len()
            ))
        })
    }

    /// The key as SQLCipher's raw-key literal, `x'<64 hex digits>'`.
    #[cfg(feature = "encryption")]
    pub(crate) fn raw_literal(&self) -> String {
        format!("x'{}'", hex::encode(self.0))
    }
}

impl std::fmt::Debug for DatabaseKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        // Never the key itself.
        f.write_str("DatabaseKey(..)")
    }
}
