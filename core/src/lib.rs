//! Tandem's client engine.
//!
//! Every device keeps a local SQLite database that is the single source of
//! truth for its UI, and a durable outbox of the mutations it has made. An
//! app opens a [`Client`] on a data directory and writes, reads, queries
//! and observes documents through it; everything is local and immediate,
//! and every write is one transaction holding both the document's new local
//! view and its outbox entry.
//!
//! - [`client`]: the [`Client`] facade, shaped for the FFI layer;
//! - [`store`]: the database (connections, pragmas, schema and migrations,
//!   local writes, queries, the outbox, confirmed state and view rebuilds);
//! - [`observe`]: query and document observers, coalesced, notified after
//!   commit;
//! - [`query`]: the [`Query`] type;
//! - [`document`]: [`LocalDocument`], what the app reads, and [`DocKey`];
//! - [`coordination`]: the user's other devices, roles with fencing, the
//!   duplicate guard, push hints;
//! - [`credentials`]: where the device's tokens are kept (the database,
//!   or the platform's secret store through a [`CredentialStore`]);
//! - [`config`] and [`error`].
//!
//! - [`sync`]: syncing with the server: a sans-I/O engine (events in,
//!   actions out) and the tokio driver that runs it over a WebSocket, with
//!   credentials, conflicts, status and the cache budget;
//!   [`Client::start_sync`] starts it.
//!
//! `docs/ENGINE.md` describes the engine for people using it.

pub mod client;
pub mod config;
pub mod coordination;
pub mod credentials;
pub mod document;
pub mod error;
pub mod observe;
pub mod query;
pub mod store;
pub mod sync;

pub use client::{Client, ConnectionState, Operation, SpaceInfo, Status, SyncConfig, SyncOutcome};
pub use config::{
    ClientConfig, DATABASE_FILE, DEFAULT_MAX_DOCUMENT_BYTES, DatabaseKey, Durability,
};
pub use coordination::{DeviceInfo, DevicesObserver, GuardOutcome, RoleInfo, RoleObserver};
pub use credentials::{CredentialStore, CredentialStoreError, MemoryCredentialStore};
pub use document::{DocKey, DocRef, LocalDocument};
pub use error::Error;
pub use observe::{DocumentObserver, QueryObserver, Subscription};
pub use query::{Filter, FilterOp, FilterValue, Query};
pub use store::{ConflictRecord, OutboxState, PendingMutation};
pub use sync::{
    Conflict, ConflictHandler, MutationFailure, Resolution, SpaceProgress, StaticToken,
    StatusObserver, SyncError, SyncErrorKind, SyncStatus, SyncTuning, TlsSettings, TokenError,
    TokenProvider,
};
pub use tandem_protocol::RoleFence;
