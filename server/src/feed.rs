//! Reading the change feed page by page, for catch-up on the WebSocket and
//! for the HTTP pull endpoint.
//!
//! A page holds the documents of the space whose version is above the cursor,
//! in version order. Pages in the middle of a catch-up carry no checksum (the
//! device is between two states of the server); the last page (`more` is
//! false) carries the checksum at `head`, the revision the device is then at.
//! A cursor below the compaction horizon (tombstones it has not seen were
//! purged) or above the head (the server does not know that revision) cannot
//! be resumed: the feed starts again from 0 and the first page says `reset`.
//!
//! A page ends at the page size (changes) or before its message would be
//! longer than the frame limit the server announces (`max_frame_bytes`),
//! whichever comes first, so a device that honours the announced limit can
//! read every page. A page always holds at least one change: a change too
//! long for a frame on its own (a document written before the limits were
//! lowered; the server refuses new ones) goes alone in its page, over the
//! limit, rather than never.

use tandem_protocol::wire::Changes;
use tandem_protocol::{SpaceId, UserId};
use tracing::warn;

use crate::store::{ChangePage, FeedStore, PageLimit, StoreError};

/// One page and where the feed goes next.
#[derive(Debug, Clone)]
pub struct FeedPage {
    /// The `changes` message to send.
    pub message: Changes,
    /// What comes next.
    pub next: FeedNext,
}

/// Where the feed goes after a page.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FeedNext {
    /// More pages follow, after this revision.
    More(u64),
    /// Caught up: the device is at this revision (the head of the snapshot).
    CaughtUp(u64),
}

/// Whether a cursor can be resumed against a space at this position.
pub fn needs_reset(cursor: u64, head: u64, horizon: u64) -> bool {
    cursor > 0 && (cursor < horizon || cursor > head)
}

/// The limit of a page of `space`: at most `page_size` changes, and a
/// `changes` message of at most `max_frame_bytes`.
pub fn page_limit(space: &SpaceId, page_size: usize, max_frame_bytes: usize) -> PageLimit {
    PageLimit {
        changes: page_size.max(1),
        bytes: max_frame_bytes.saturating_sub(Changes::envelope_len(space)),
    }
}

/// Reads the page after `after`. `reset` marks a page that starts a feed
/// from 0 after a reset; a cursor that turns out not to be resumable restarts
/// the feed from 0 with `reset` set.
pub async fn read_page(
    store: &dyn FeedStore,
    reader: &UserId,
    space: &SpaceId,
    after: u64,
    reset: bool,
    limit: PageLimit,
) -> Result<FeedPage, StoreError> {
    let page = store
        .read_changes(reader.clone(), space.clone(), after, limit)
        .await?;
    let p = page.position;
    if needs_reset(after, p.head, p.horizon) {
        let page = store
            .read_changes(reader.clone(), space.clone(), 0, limit)
            .await?;
        return Ok(build(space, page, true, limit));
    }
    Ok(build(space, page, reset, limit))
}

fn build(space: &SpaceId, page: ChangePage, reset: bool, limit: PageLimit) -> FeedPage {
    if let [only] = page.changes.as_slice()
        && PageLimit::bytes_of(only) > limit.bytes
    {
        warn!(space = %space, collection = %only.collection, doc = %only.doc_id, rev = only.rev,
            "a change is longer than the frame limit on its own; it is sent alone, over the limit");
    }
    let last = page.changes.last().map(|c| c.rev);
    let next = if page.more {
        FeedNext::More(last.unwrap_or(0))
    } else {
        FeedNext::CaughtUp(page.position.head.max(last.unwrap_or(0)))
    };
    FeedPage {
        message: Changes {
            space: space.clone(),
            changes: page.changes,
            more: page.more,
            checksum: (!page.more).then_some(page.position.checksum),
            head: Some(page.position.head),
            reset,
        },
        next,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn which_cursors_reset() {
        assert!(!needs_reset(0, 10, 5), "from 0 never resets");
        assert!(needs_reset(3, 10, 5));
        assert!(!needs_reset(5, 10, 5));
        assert!(!needs_reset(10, 10, 5));
        assert!(needs_reset(11, 10, 0), "a cursor past the head");
    }

    #[test]
    fn a_page_leaves_room_for_the_message_around_its_changes() {
        let space = SpaceId::new("personal:alice").unwrap_or_else(|e| panic!("{e}"));
        let limit = page_limit(&space, 1_000, 1 << 20);
        assert_eq!(limit.changes, 1_000);
        assert_eq!(
            limit.bytes,
            (1 << 20) - Changes::envelope_len(&space),
            "the envelope is counted once"
        );
        assert_eq!(page_limit(&space, 10, 5).bytes, 0, "never below zero");
    }
}
