//! Who hears about commits.
//!
//! The store announces every committed change to one listener, which the
//! store does not know the kind of: the client's observers
//! (`crate::observe`) in an app, nobody in a store's own tests. The
//! listener is called after the commit, on the writing thread, with the
//! writer lock released or not yet taken again, so it must not block: the
//! observers only add to an inbox.

use crate::document::DocRef;

/// Hears of committed changes.
pub(crate) trait CommitListener: Send + Sync {
    /// `docs` changed in a transaction that has committed.
    fn committed(&self, docs: Vec<DocRef>);
}

/// Nobody listens.
#[cfg(test)]
pub(crate) struct NoListener;

#[cfg(test)]
impl CommitListener for NoListener {
    fn committed(&self, _docs: Vec<DocRef>) {}
}
