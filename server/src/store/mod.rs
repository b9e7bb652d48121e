//! Storage: the [`Store`] trait and its implementations, SQLite (embedded,
//! one server) and PostgreSQL (several server instances on one database).
//!
//! The trait is what the server needs from a database, shaped so that a
//! second implementation (PostgreSQL, shared by several server instances) can
//! sit behind it: every method is async, takes owned arguments and returns a
//! boxed future, so the server holds an `Arc<dyn Store>`.
//!
//! A store is three parts, one per concern, each with its contract next to
//! its trait:
//!
//! - [`AuthStore`] ([`auth`]): users, devices, their credentials, and the
//!   spaces users belong to.
//! - [`FeedStore`] ([`feed`]): the change feed: pushes, pages, each space's
//!   head and checksum, compaction and the idempotency records.
//! - [`CoordinationStore`] ([`coordination`]): the devices of one user
//!   working together: the registry, presence, roles, the duplicate guard
//!   and push hints.
//!
//! [`Store`] is all three and the store's life cycle. A caller that needs
//! one part takes that part (`&dyn FeedStore`), so what it may touch shows.
//!
//! What every part keeps (the conformance suite, `store_conformance_tests!`,
//! checks it):
//!
//! - **Authorization lives here.** Every read and write names the acting user;
//!   a user who is not a member of a space can neither read nor write it.
//! - **Commits are announced.** After each commit the store hands the
//!   [`StoreEvent`]s it produced to its [`CommitListener`], in commit order, so
//!   that fan-out follows the store's commit path.
//! - **Whose clock: a method takes `now_ms` only for times of the caller's
//!   request.** A credential's expiry (the caller computed it from that
//!   clock), the bound on a push's clock readings, the dates of the records
//!   a push leaves and the cutoffs of compaction are the caller's clock.
//!   Every time that coordinates devices, fence checks of pushes included,
//!   is the store's own clock (see [`coordination`]).

pub mod auth;
pub mod coordination;
pub mod feed;
pub mod postgres;
pub mod sqlite;

#[cfg(feature = "conformance")]
pub mod conformance;

use std::sync::Arc;

use futures::future::BoxFuture;
use tandem_protocol::wire::{DeviceInfo, RoleState};
use tandem_protocol::{ErrorCode, SpaceId, UserId};

pub use auth::{
    AuthStore, DeviceIdentity, DeviceRegistration, NewCredentials, RefreshOutcome, too_many_devices,
};
pub use coordination::{
    CoordinationStore, HintClaim, HintTarget, HintedSpace, Leases, PresenceStamp, RoleChange,
    RoleRequest,
};
pub use feed::{
    ChangePage, CommittedChanges, CompactionReport, CompactionRule, FeedPosition, FeedStore,
    PageFill, PageLimit, PushRules,
};
pub use postgres::{PostgresOptions, PostgresStore};
pub use sqlite::SqliteStore;

/// What a store call returns.
pub type StoreFuture<'a, T> = BoxFuture<'a, Result<T, StoreError>>;

/// Why a store call failed.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum StoreError {
    /// The acting user may not do this.
    #[error("{0}")]
    Forbidden(String),
    /// No such thing.
    #[error("{0}")]
    NotFound(String),
    /// It exists already.
    #[error("{0}")]
    AlreadyExists(String),
    /// The request is invalid.
    #[error("{0}")]
    InvalidRequest(String),
    /// The store has been closed.
    #[error("the store is closed")]
    Closed,
    /// The database failed; nothing was changed.
    #[error("storage failure: {0}")]
    Backend(String),
    /// The device was revoked; it cannot register again.
    #[error("{0}")]
    Revoked(String),
    /// A role fence is stale: the device does not hold the role at that
    /// epoch (or its lease ran out).
    #[error("{0}")]
    StaleEpoch(String),
    /// The user has as many devices as allowed; a new one cannot register.
    #[error("{0}")]
    TooManyDevices(String),
}

impl StoreError {
    /// The protocol's error code for this failure.
    pub fn code(&self) -> ErrorCode {
        match self {
            StoreError::Forbidden(_) => ErrorCode::Forbidden,
            StoreError::NotFound(_) => ErrorCode::NotFound,
            StoreError::AlreadyExists(_) => ErrorCode::AlreadyExists,
            StoreError::InvalidRequest(_) => ErrorCode::InvalidRequest,
            StoreError::Closed => ErrorCode::ShuttingDown,
            StoreError::Backend(_) => ErrorCode::Internal,
            StoreError::Revoked(_) => ErrorCode::Revoked,
            StoreError::StaleEpoch(_) => ErrorCode::StaleEpoch,
            StoreError::TooManyDevices(_) => ErrorCode::TooManyDevices,
        }
    }
}

/// What a commit announces.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum StoreEvent {
    /// Changes were committed to a space.
    Changes(Arc<CommittedChanges>),
    /// A user was added to or removed from a space.
    MembershipChanged {
        /// The user.
        user: UserId,
        /// The space.
        space: SpaceId,
        /// Whether the user is now a member.
        member: bool,
        /// All of the user's spaces after the change.
        spaces: Vec<SpaceId>,
    },
    /// A device's credentials were revoked; its connections must close.
    DeviceRevoked(DeviceIdentity),
    /// A role of `user` changed holder.
    RoleChanged {
        /// The user.
        user: UserId,
        /// The role's state after the change.
        state: RoleState,
    },
    /// A device of `user` connected, disconnected, registered, was renamed
    /// or revoked.
    DevicesChanged {
        /// The user.
        user: UserId,
        /// The user's devices after the change.
        devices: Vec<DeviceInfo>,
    },
}

/// Receives what each commit announces, in commit order. Called on the
/// store's commit path, so it must not block.
pub trait CommitListener: Send + Sync {
    /// One commit's events.
    fn committed(&self, events: Vec<StoreEvent>);
}

/// A listener that ignores everything.
#[derive(Debug, Default)]
pub struct NoListener;

impl CommitListener for NoListener {
    fn committed(&self, _events: Vec<StoreEvent>) {}
}

/// The server's database: accounts, the change feed and device
/// coordination, in one database.
pub trait Store: AuthStore + FeedStore + CoordinationStore {
    /// Finishes queued writes and stops. Later calls fail with
    /// [`StoreError::Closed`].
    fn close(&self) -> StoreFuture<'_, ()>;
}
