//! Storage: the [`Store`] trait and its implementations, SQLite (embedded,
//! one server) and PostgreSQL (several server instances on one database).
//!
//! The trait is what the server needs from a database, shaped so that a
//! second implementation (PostgreSQL, shared by several server instances) can
//! sit behind it: every method is async, takes owned arguments and returns a
//! boxed future, so the server holds an `Arc<dyn Store>`.
//!
//! Contract every implementation keeps (the [`conformance`] suite checks it):
//!
//! - **Authorization lives here.** Every read and write names the acting user;
//!   a user who is not a member of a space can neither read nor write it.
//! - **The change feed is the documents table.** Each document row keeps its
//!   current state, its version (the per-space revision of its last change),
//!   the device and mutation that made it. The changes since cursor `c` are
//!   the rows with `version > c` in version order, tombstones included.
//! - **Each space keeps its head, checksum and compaction horizon.** The
//!   checksum ([`tandem_protocol::checksum`]) covers live documents and is
//!   maintained incrementally at commit.
//! - **Pushes are idempotent by mutation id.** Every mutation's result is
//!   recorded; a retry by the same device gets the recorded result
//!   (`applied` becomes `duplicate`).
//! - **Roles are one row per (user, role).** The row holds the holder, the
//!   epoch and the lease; every change of it happens in a transaction that
//!   reads and writes the row under a lock (SQLite's single writer, a
//!   PostgreSQL row lock), so two instances never hand out one epoch twice.
//!   The decision itself is [`crate::roles::decide`], shared by every store.
//! - **Fences are checked where the write commits.** A mutation or guard
//!   carrying a fence is accepted only if, in the transaction that commits
//!   it, the role's row names the author at that epoch with a running lease.
//! - **Guards are a unique key.** One row per (user, hash of scope and
//!   normalized content); inserting it, or taking over an expired one, is
//!   one statement whose result says `first` or `duplicate`.
//! - **Presence is rows with a lease.** Each instance stamps a row per
//!   connected device; rows of a crashed instance run out.
//! - **Commits are announced.** After each commit the store hands the
//!   [`StoreEvent`]s it produced to its [`CommitListener`], in commit order, so
//!   that fan-out follows the store's commit path.

pub mod auth;
pub mod coordination;
pub mod feed;
pub mod postgres;
pub mod sqlite;

#[cfg(feature = "conformance")]
pub mod conformance;

use std::sync::Arc;

use futures::future::BoxFuture;
use tandem_protocol::api::{PushToken, SpaceMembers, SpaceSummary};
use tandem_protocol::wire::{DeviceInfo, GuardVerdict, MutationResult, RoleState};
use tandem_protocol::{ErrorCode, Mutation, RoleFence, SpaceId, UserId};

use crate::auth::TokenHash;

pub use auth::{
    DeviceIdentity, DeviceRegistration, NewCredentials, RefreshOutcome, too_many_devices,
};
pub use coordination::{
    HintClaim, HintTarget, HintedSpace, Leases, PresenceStamp, RoleChange, RoleRequest,
};
pub use feed::{
    ChangePage, CommittedChanges, CompactionReport, CompactionRule, FeedPosition, PageFill,
    PageLimit, PushRules,
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

/// The server's database.
pub trait Store: Send + Sync + 'static {
    /// Registers (or registers again) a device, creates its user's personal
    /// space if needed, and stores a fresh credential pair. Credentials of an
    /// earlier registration of the same device are revoked. A device not
    /// registered yet is refused with [`StoreError::TooManyDevices`] when
    /// its user already has `max_devices` devices that are not revoked
    /// (counted in the same transaction: two racing registrations cannot
    /// both take the last place).
    fn register_device(
        &self,
        device: DeviceRegistration,
        credentials: NewCredentials,
        max_devices: usize,
        now_ms: u64,
    ) -> StoreFuture<'_, ()>;

    /// The device an unexpired access token belongs to.
    fn device_for_access_token(
        &self,
        access: TokenHash,
        now_ms: u64,
    ) -> StoreFuture<'_, Option<DeviceIdentity>>;

    /// Spends a refresh token for `next` (see [`RefreshOutcome`]).
    fn refresh_credentials(
        &self,
        presented: TokenHash,
        next: NewCredentials,
        now_ms: u64,
    ) -> StoreFuture<'_, RefreshOutcome>;

    /// Revokes a device for good: its credentials are deleted (its
    /// connections close), it leaves the registry and its role candidacies,
    /// and registering it again is refused with [`StoreError::Revoked`].
    fn revoke_device(&self, device: DeviceIdentity) -> StoreFuture<'_, ()>;

    /// The user's devices that are not revoked, by name.
    fn devices_of(&self, user: UserId, now_ms: u64) -> StoreFuture<'_, Vec<DeviceInfo>>;

    /// Renames a device of `device.user` ([`StoreError::NotFound`] if it has
    /// no such device).
    fn rename_device(&self, device: DeviceIdentity, name: String) -> StoreFuture<'_, ()>;

    /// Sets (or with `None` removes) a device's push token.
    fn set_push_token(
        &self,
        device: DeviceIdentity,
        token: Option<PushToken>,
    ) -> StoreFuture<'_, ()>;

    /// The offline devices with a push token among the members of `spaces`
    /// that were not hinted since the space's changes (`told_after_ms`) and
    /// whose last hint is older than `min_interval_ms`; their last hint time
    /// becomes now (so another instance does not send the same hint).
    fn claim_push_hints(
        &self,
        spaces: Vec<HintedSpace>,
        min_interval_ms: u64,
        now_ms: u64,
    ) -> StoreFuture<'_, HintClaim>;

    /// A device connected to `instance`: stamps its presence row (a new
    /// row announces [`StoreEvent::DevicesChanged`]).
    fn presence_connected(
        &self,
        instance: String,
        stamp: PresenceStamp,
        leases: Leases,
        now_ms: u64,
    ) -> StoreFuture<'_, ()>;

    /// A device's last connection to `instance` closed: its row goes and its
    /// last-seen time is kept.
    fn presence_disconnected(
        &self,
        instance: String,
        device: DeviceIdentity,
        now_ms: u64,
    ) -> StoreFuture<'_, ()>;

    /// Stamps every device connected to `instance` again, and deletes every
    /// presence row (of any instance) that ran out: a crashed instance's
    /// devices go offline.
    fn presence_heartbeat(
        &self,
        instance: String,
        stamps: Vec<PresenceStamp>,
        leases: Leases,
        now_ms: u64,
    ) -> StoreFuture<'_, ()>;

    /// Applies `request` of `actor` (a device of the role's user) to the
    /// role, atomically (see [`crate::roles::decide`]); a change of holder
    /// is announced ([`StoreEvent::RoleChanged`]). For PostgreSQL, `now_ms`
    /// is the database's clock.
    fn change_role(
        &self,
        actor: DeviceIdentity,
        role: String,
        request: RoleRequest,
        leases: Leases,
        now_ms: u64,
    ) -> StoreFuture<'_, RoleChange>;

    /// The roles of `user` that have a row (were ever claimed).
    fn roles_of(&self, user: UserId) -> StoreFuture<'_, Vec<RoleState>>;

    /// Roles that need [`RoleRequest::Check`]: a holder whose lease ran out
    /// or who is not connected, or no holder and a connected candidate.
    fn roles_to_check(&self, now_ms: u64) -> StoreFuture<'_, Vec<(UserId, String)>>;

    /// The duplicate guard: records the first occurrence of `hash` for
    /// `author.user` for `window_ms`, atomically: `first` if it was not
    /// recorded (or its window ran out), `duplicate` otherwise. A stale
    /// `fence` fails with [`StoreError::StaleEpoch`] and records nothing.
    fn guard(
        &self,
        author: DeviceIdentity,
        hash: [u8; 32],
        window_ms: u64,
        fence: Option<RoleFence>,
        now_ms: u64,
    ) -> StoreFuture<'_, GuardVerdict>;

    /// Deletes guard records whose window ran out; returns how many.
    fn sweep_guards(&self, now_ms: u64) -> StoreFuture<'_, u64>;

    /// Creates a shared space owned by `owner`.
    fn create_space(&self, owner: UserId, space: SpaceId) -> StoreFuture<'_, SpaceMembers>;

    /// The owner adds `member` (adding a member twice is not an error).
    fn add_member(
        &self,
        actor: UserId,
        space: SpaceId,
        member: UserId,
    ) -> StoreFuture<'_, SpaceMembers>;

    /// The owner removes a member, or a member leaves (`actor == member`).
    fn remove_member(
        &self,
        actor: UserId,
        space: SpaceId,
        member: UserId,
    ) -> StoreFuture<'_, SpaceMembers>;

    /// The spaces `user` belongs to, personal space first.
    fn spaces_of(&self, user: UserId) -> StoreFuture<'_, Vec<SpaceSummary>>;

    /// A space's members, for a member of it.
    fn space_members(&self, actor: UserId, space: SpaceId) -> StoreFuture<'_, SpaceMembers>;

    /// Applies a batch of mutations in order, in one transaction (or a group
    /// of batches in one), and answers one result per mutation. A mutation
    /// with a stale role fence is `rejected` with `stale_epoch`.
    fn push(
        &self,
        author: DeviceIdentity,
        mutations: Vec<Mutation>,
        now_ms: u64,
    ) -> StoreFuture<'_, Vec<MutationResult>>;

    /// The changes of `space` after revision `after` that fit in `limit`
    /// (see [`PageFill`]), for a member.
    fn read_changes(
        &self,
        reader: UserId,
        space: SpaceId,
        after: u64,
        limit: PageLimit,
    ) -> StoreFuture<'_, ChangePage>;

    /// The current positions of the spaces of `reader` that are named.
    /// Spaces the reader is not a member of are left out.
    fn feed_positions(
        &self,
        reader: UserId,
        spaces: Vec<SpaceId>,
    ) -> StoreFuture<'_, Vec<(SpaceId, FeedPosition)>>;

    /// Purges what `rule` names and raises compaction horizons.
    fn compact(&self, rule: CompactionRule) -> StoreFuture<'_, CompactionReport>;

    /// Finishes queued writes and stops. Later calls fail with
    /// [`StoreError::Closed`].
    fn close(&self) -> StoreFuture<'_, ()>;
}
