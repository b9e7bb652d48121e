//! Observers the app implements, and the [`Subscription`] handle.
//!
//! A stream crosses the boundary as a listener the app implements plus a
//! handle: the listener is called from a Rust thread (never the app's main
//! thread), first with the current value, then with each new one; the
//! handle stops it with [`Subscription::cancel`] or when it is released.
//! Cancellation has to be explicit API because Swift task cancellation and
//! Kotlin coroutine cancellation do not reach Rust; the Swift `AsyncStream`
//! and Kotlin `Flow` conveniences call `cancel()` when their consumer goes
//! away.
//!
//! Observer methods return `Result` so that an observer that throws does
//! not stop the subscription or disturb other observers: the failure is
//! logged (see [`set_logger`](crate::set_logger)) and the next value is
//! delivered as usual. (Kotlin implementations need not declare anything;
//! Swift implementations may be non-throwing.)

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};

use tandem_core::LocalDocument;

use crate::document::{Document, documents};
use crate::error::{TandemError, call_foreign};
use crate::status::{MutationFailure, SyncStatus};

/// Receives the results of a query.
#[uniffi::export(callback_interface)]
pub trait QueryObserver: Send + Sync {
    /// The query's result: first the current one, then each new one.
    /// Results are coalesced: after a burst of writes the latest result
    /// arrives, not every intermediate one. Called on a Rust thread; calls
    /// never overlap. Return quickly: move work to the app's own queue.
    ///
    /// An error (in Kotlin any exception, in Swift any error) is logged;
    /// the subscription goes on.
    fn on_result(&self, documents: Vec<Document>) -> Result<(), TandemError>;
}

/// Receives the local view of one document.
#[uniffi::export(callback_interface)]
pub trait DocumentObserver: Send + Sync {
    /// The document (none if there is none): first its current view, then
    /// each new one. Called on a Rust thread; calls never overlap.
    /// An error is logged; the subscription goes on.
    fn on_document(&self, document: Option<Document>) -> Result<(), TandemError>;
}

/// Receives the sync status, and the writes the server refuses.
#[uniffi::export(callback_interface)]
pub trait StatusObserver: Send + Sync {
    /// The status: first the current one, then each change. Called on the
    /// client's observer thread (never the sync engine's): return quickly.
    /// An error is logged; the subscription goes on.
    fn on_status(&self, status: SyncStatus) -> Result<(), TandemError>;

    /// A write became failed (the server refused it for good, or its
    /// attempts ran out) and was rolled back from the view; the app may
    /// retry or discard it.
    fn on_mutation_failed(&self, failure: MutationFailure) -> Result<(), TandemError>;
}

/// An active observation. Cancelled by [`Subscription::cancel`] or when the
/// handle is released (in Kotlin `close()`, or when it is garbage
/// collected; in Swift when the last reference goes).
#[derive(uniffi::Object)]
pub struct Subscription {
    inner: tandem_core::Subscription,
    cancelled: AtomicBool,
    active: Arc<ActiveSubscriptions>,
}

#[uniffi::export]
impl Subscription {
    /// Stops the observation. When it returns the observer is not being
    /// called and will not be called again (unless `cancel` is called from
    /// inside the observer, where only that call is still running).
    /// Calling it again does nothing.
    pub fn cancel(&self) {
        self.inner.cancel();
        if !self.cancelled.swap(true, Ordering::SeqCst) {
            self.active.count.fetch_sub(1, Ordering::SeqCst);
        }
    }

    /// Whether the subscription has been cancelled.
    pub fn is_cancelled(&self) -> bool {
        self.cancelled.load(Ordering::SeqCst)
    }
}

impl Subscription {
    /// Wraps a core subscription, counting it as active.
    pub(crate) fn new(
        inner: tandem_core::Subscription,
        active: &Arc<ActiveSubscriptions>,
    ) -> Arc<Subscription> {
        active.count.fetch_add(1, Ordering::SeqCst);
        Arc::new(Subscription {
            inner,
            cancelled: AtomicBool::new(false),
            active: Arc::clone(active),
        })
    }
}

impl Drop for Subscription {
    fn drop(&mut self) {
        self.cancel();
    }
}

impl std::fmt::Debug for Subscription {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Subscription")
            .field("cancelled", &self.is_cancelled())
            .finish()
    }
}

/// How many of a client's subscriptions are neither cancelled nor
/// released: what [`Client::active_subscriptions`](crate::Client::active_subscriptions)
/// reports, so an app (and the tests) can see a leaked observer.
#[derive(Debug, Default)]
pub(crate) struct ActiveSubscriptions {
    count: AtomicU64,
}

impl ActiveSubscriptions {
    pub(crate) fn get(&self) -> u64 {
        self.count.load(Ordering::SeqCst)
    }
}

/// Adapts the app's query observer to the core's.
pub(crate) struct QueryObserverBridge(pub(crate) Box<dyn QueryObserver>);

impl tandem_core::QueryObserver for QueryObserverBridge {
    fn on_result(&self, docs: Vec<LocalDocument>) {
        let docs = documents(docs);
        call_foreign("a query observer", || self.0.on_result(docs));
    }

    fn on_error(&self, error: tandem_core::Error) {
        // Storage trouble while re-running the query; the core keeps the
        // subscription and retries at the next commit.
        tracing::warn!(target: "tandem_ffi", "re-running an observed query failed: {error}");
    }
}

/// Adapts the app's document observer to the core's.
pub(crate) struct DocumentObserverBridge(pub(crate) Box<dyn DocumentObserver>);

impl tandem_core::DocumentObserver for DocumentObserverBridge {
    fn on_document(&self, doc: Option<LocalDocument>) {
        let doc = doc.map(Document::from);
        call_foreign("a document observer", || self.0.on_document(doc));
    }

    fn on_error(&self, error: tandem_core::Error) {
        tracing::warn!(target: "tandem_ffi", "reading an observed document failed: {error}");
    }
}

/// Adapts the app's status observer to the core's.
pub(crate) struct StatusObserverBridge(pub(crate) Box<dyn StatusObserver>);

impl tandem_core::StatusObserver for StatusObserverBridge {
    fn on_status(&self, status: tandem_core::SyncStatus) {
        let status = SyncStatus::from(status);
        call_foreign("a status observer", || self.0.on_status(status));
    }

    fn on_mutation_failed(&self, failure: tandem_core::MutationFailure) {
        let failure = MutationFailure::from(failure);
        call_foreign("a status observer", || self.0.on_mutation_failed(failure));
    }
}
