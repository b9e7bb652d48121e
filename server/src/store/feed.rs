//! The change feed: pushes, pages of changes, each space's position, and
//! compaction ([`FeedStore`]).
//!
//! Contract every implementation keeps (the conformance suite checks it):
//!
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
//! - **Fences are checked where the write commits.** A mutation carrying a
//!   fence is applied only if, in the transaction that commits it, the
//!   role's row names the author at that epoch with a running lease (the
//!   same check as a fenced guard's, see [`super::coordination`]).

use std::sync::Arc;

use tandem_protocol::wire::MutationResult;
use tandem_protocol::{Change, Mutation, SpaceChecksum, SpaceId, UserId};

use super::{DeviceIdentity, StoreFuture};
use crate::collection_rules::Schema;

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

/// How much one page of the change feed may hold.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct PageLimit {
    /// At most this many changes.
    pub changes: usize,
    /// At most this many bytes of changes: the sum of each change's
    /// [`Change::encoded_len`] plus one (its comma). A page always holds at
    /// least one change, however long.
    pub bytes: usize,
}

impl PageLimit {
    /// Up to `n` changes, whatever their size.
    pub fn changes(n: usize) -> PageLimit {
        PageLimit {
            changes: n,
            bytes: usize::MAX,
        }
    }

    /// The bytes a change takes on a page.
    pub fn bytes_of(change: &Change) -> usize {
        change.encoded_len().saturating_add(1)
    }
}

/// Fills a page within a [`PageLimit`], change by change.
#[derive(Debug)]
pub struct PageFill {
    limit: PageLimit,
    taken: usize,
    bytes: usize,
}

impl PageFill {
    /// An empty page.
    pub fn new(limit: PageLimit) -> PageFill {
        PageFill {
            limit,
            taken: 0,
            bytes: 0,
        }
    }

    /// Whether `change` goes on the page (then it is counted): the page's
    /// first change always does; a later one if the page stays within both
    /// limits.
    pub fn admit(&mut self, change: &Change) -> bool {
        if self.taken >= self.limit.changes.max(1) {
            return false;
        }
        let bytes = PageLimit::bytes_of(change);
        if self.taken > 0 && self.bytes.saturating_add(bytes) > self.limit.bytes {
            return false;
        }
        self.taken += 1;
        self.bytes = self.bytes.saturating_add(bytes);
        true
    }
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

/// What decides a mutation's fate besides the data: the schema, the
/// document size limit, the frame limit and the clock bound.
#[derive(Debug, Clone)]
pub struct PushRules {
    /// Policies and field rules.
    pub schema: Arc<Schema>,
    /// Largest document state (JSON), in bytes.
    pub max_document_bytes: usize,
    /// Largest frame the server sends: a write whose change would not fit
    /// in a `changes` message of this size on its own is refused (as
    /// `document_too_large`), so every change can be delivered.
    pub max_frame_bytes: usize,
    /// How far ahead of the server's clock (the `now_ms` of the push) a
    /// mutation's clock reading may be, in milliseconds.
    pub max_clock_skew_ms: u64,
}

impl PushRules {
    /// The rules with `schema` and the server's default limits.
    pub fn new(schema: Arc<Schema>) -> PushRules {
        let limits = crate::config::Limits::default();
        PushRules {
            schema,
            max_document_bytes: limits.max_document_bytes,
            max_frame_bytes: limits.max_frame_bytes,
            max_clock_skew_ms: limits.max_clock_skew.as_millis() as u64,
        }
    }
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

/// The change feed: writing documents and reading what changed.
pub trait FeedStore: Send + Sync + 'static {
    /// Applies a batch of mutations in order, in one transaction (or a group
    /// of batches in one), and answers one result per mutation. `now_ms`
    /// bounds the mutations' clock readings and dates their records; a
    /// mutation with a stale role fence (by the store's clock) is `rejected`
    /// with `stale_epoch`.
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
}
