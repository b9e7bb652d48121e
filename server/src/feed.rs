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

use tandem_protocol::wire::Changes;
use tandem_protocol::{SpaceId, UserId};

use crate::store::{ChangePage, Store, StoreError};

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

/// Reads the page after `after`. `reset` marks a page that starts a feed
/// from 0 after a reset; a cursor that turns out not to be resumable restarts
/// the feed from 0 with `reset` set.
pub async fn read_page(
    store: &dyn Store,
    reader: &UserId,
    space: &SpaceId,
    after: u64,
    reset: bool,
    limit: usize,
) -> Result<FeedPage, StoreError> {
    let page = store
        .read_changes(reader.clone(), space.clone(), after, limit)
        .await?;
    let p = page.position;
    if needs_reset(after, p.head, p.horizon) {
        let page = store
            .read_changes(reader.clone(), space.clone(), 0, limit)
            .await?;
        return Ok(build(space, page, true));
    }
    Ok(build(space, page, reset))
}

fn build(space: &SpaceId, page: ChangePage, reset: bool) -> FeedPage {
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
}
