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
//! - **Commits are announced.** After each commit the store hands the
//!   [`StoreEvent`]s it produced to its [`CommitListener`], in commit order, so
//!   that fan-out follows the store's commit path.

pub mod postgres;
pub mod sqlite;

#[cfg(feature = "conformance")]
pub mod conformance;

use std::sync::Arc;

use futures::future::BoxFuture;
use tandem_protocol::api::{SpaceMembers, SpaceSummary};
use tandem_protocol::wire::MutationResult;
use tandem_protocol::{Change, DeviceId, ErrorCode, Mutation, SpaceChecksum, SpaceId, UserId};

use crate::auth::TokenHash;
use crate::schema::Schema;

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
        }
    }
}

/// A device of a user: who is acting.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct DeviceIdentity {
    /// The user.
    pub user: UserId,
    /// The device.
    pub device: DeviceId,
}

/// A device's registration details.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DeviceRegistration {
    /// Whose device.
    pub identity: DeviceIdentity,
    /// A name for people.
    pub name: String,
    /// The platform.
    pub platform: String,
    /// The app's version.
    pub app_version: String,
}

/// Hashes and expiry times of a fresh access/refresh token pair.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct NewCredentials {
    /// The access token's hash.
    pub access: TokenHash,
    /// When it expires, Unix milliseconds.
    pub access_expires_at: u64,
    /// The refresh token's hash.
    pub refresh: TokenHash,
    /// When it expires, Unix milliseconds.
    pub refresh_expires_at: u64,
}

/// What presenting a refresh token did.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum RefreshOutcome {
    /// The token was current: it is spent and the new pair is stored.
    Rotated(DeviceIdentity),
    /// The token had already been rotated: every credential of the device is
    /// revoked (a [`StoreEvent::DeviceRevoked`] is announced).
    Reused(DeviceIdentity),
    /// The token expired.
    Expired,
    /// No such token (never issued, or purged by a revocation).
    Unknown,
}

/// A space's position in its feed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct FeedPosition {
    /// The latest revision.
    pub head: u64,
    /// The checksum at `head`.
    pub checksum: SpaceChecksum,
    /// Cursors below this revision cannot be resumed (tombstones they have
    /// not seen were purged).
    pub horizon: u64,
}

/// One page of a space's change feed, read from one snapshot.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ChangePage {
    /// Changes with `rev > after`, in revision order.
    pub changes: Vec<Change>,
    /// More changes follow this page.
    pub more: bool,
    /// The space's position in the same snapshot.
    pub position: FeedPosition,
}

/// Live changes of one space committed together, for fan-out.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CommittedChanges {
    /// The space.
    pub space: SpaceId,
    /// The changes, with consecutive revisions.
    pub changes: Vec<Change>,
    /// The space's checksum after the last of them.
    pub checksum: SpaceChecksum,
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

/// What decides a mutation's fate besides the data: the schema and the
/// document size limit.
#[derive(Debug, Clone)]
pub struct PushRules {
    /// Policies and field rules.
    pub schema: Arc<Schema>,
    /// Largest document state (JSON), in bytes.
    pub max_document_bytes: usize,
}

/// What compaction removes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct CompactionRule {
    /// Purge tombstones committed before this time (Unix ms).
    pub tombstones_before_ms: Option<u64>,
    /// Purge tombstones whose version is at most this revision (any space).
    pub tombstones_up_to_rev: Option<u64>,
    /// Purge idempotency records of mutations before this time (Unix ms).
    pub mutations_before_ms: Option<u64>,
    /// Purge credentials that expired before this time (Unix ms).
    pub credentials_before_ms: Option<u64>,
}

/// What compaction removed.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct CompactionReport {
    /// Tombstones purged.
    pub tombstones: u64,
    /// Mutation records purged.
    pub mutations: u64,
    /// Credentials purged.
    pub credentials: u64,
}

/// The server's database.
pub trait Store: Send + Sync + 'static {
    /// Registers (or registers again) a device, creates its user's personal
    /// space if needed, and stores a fresh credential pair. Credentials of an
    /// earlier registration of the same device are revoked.
    fn register_device(
        &self,
        device: DeviceRegistration,
        credentials: NewCredentials,
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

    /// Revokes every credential of a device.
    fn revoke_device(&self, device: DeviceIdentity) -> StoreFuture<'_, ()>;

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
    /// of batches in one), and answers one result per mutation. Role fences
    /// are not checked yet.
    fn push(
        &self,
        author: DeviceIdentity,
        mutations: Vec<Mutation>,
        now_ms: u64,
    ) -> StoreFuture<'_, Vec<MutationResult>>;

    /// Up to `limit` changes of `space` after revision `after`, for a member.
    fn read_changes(
        &self,
        reader: UserId,
        space: SpaceId,
        after: u64,
        limit: usize,
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
