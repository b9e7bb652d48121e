//! Observers of queries and documents.
//!
//! An app subscribes with [`Client::observe_query`](crate::Client::observe_query)
//! or [`Client::observe_document`](crate::Client::observe_document) and gets
//! a [`Subscription`]. The contract:
//!
//! - The observer first receives the current result, then a new result
//!   each time a commit changes it. It is only called after the commit that
//!   changed the data (results are read from committed state), never before.
//! - Results are coalesced: every commit adds the documents it changed to
//!   an inbox; one background task (`crate::background`: its own thread by
//!   default, or the host's turn) takes everything in the inbox at once,
//!   re-runs each affected query once, and calls the observer only if the
//!   result differs from the last one it received. A burst of writes therefore yields the latest result,
//!   not every intermediate one, and a write that does not change a result
//!   yields nothing.
//! - Calls to one observer never overlap (there is one observer task).
//!   Observers should return quickly; work that takes time belongs on the
//!   app's own queue.
//! - The sync engine's notices for the app (status, roles, devices, failed
//!   writes; `sync/live.rs`) are delivered by the same task, in the order
//!   they were posted, so no app code runs on the sync engine's task.
//! - [`Subscription::cancel`], or dropping the subscription, stops it. When
//!   `cancel` returns, the observer is not being called and will not be
//!   called again (unless `cancel` was called from inside the observer
//!   itself, in which case only that call is still running).

use std::collections::{HashMap, HashSet};
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, OnceLock, Weak};
use std::thread::ThreadId;

use crate::background::{Background, BackgroundTask, TaskHandle};
use crate::document::{DocRef, LocalDocument};
use crate::error::Error;
use crate::query::ResolvedQuery;
use crate::store::{CommitListener, Store};

/// Receives the results of a query.
pub trait QueryObserver: Send + Sync {
    /// The query's result: first the current one, then each new one.
    fn on_result(&self, documents: Vec<LocalDocument>);

    /// Re-running the query failed (storage trouble); the subscription
    /// stays active and the next commit tries again.
    fn on_error(&self, error: Error) {
        let _ = error;
    }
}

/// Receives the local view of one document.
pub trait DocumentObserver: Send + Sync {
    /// The document (`None` if there is none): first its current view,
    /// then each new one.
    fn on_document(&self, document: Option<LocalDocument>);

    /// Reading the document failed (storage trouble); the subscription
    /// stays active and the next commit tries again.
    fn on_error(&self, error: Error) {
        let _ = error;
    }
}

/// An active observation. Cancels when dropped.
pub struct Subscription {
    kind: SubscriptionKind,
}

enum SubscriptionKind {
    /// A query or document observer, called by the observer task.
    Observer {
        slot: Arc<Slot>,
        registry: Weak<Registry>,
    },
    /// Something else that stops by running a function (status observers).
    Callback {
        cancelled: AtomicBool,
        cancel: Mutex<Option<Box<dyn FnOnce() + Send>>>,
    },
}

impl Subscription {
    /// A subscription that runs `cancel` once when cancelled or dropped.
    pub(crate) fn from_cancel(cancel: impl FnOnce() + Send + 'static) -> Subscription {
        Subscription {
            kind: SubscriptionKind::Callback {
                cancelled: AtomicBool::new(false),
                cancel: Mutex::new(Some(Box::new(cancel))),
            },
        }
    }

    /// Stops the observation (see the module documentation for what is
    /// guaranteed when this returns). Calling it again does nothing.
    pub fn cancel(&self) {
        let (slot, registry) = match &self.kind {
            SubscriptionKind::Observer { slot, registry } => (slot, registry),
            SubscriptionKind::Callback { cancelled, cancel } => {
                cancelled.store(true, Ordering::SeqCst);
                let cancel = lock(cancel).take();
                if let Some(cancel) = cancel {
                    cancel();
                }
                return;
            }
        };
        slot.cancelled.store(true, Ordering::SeqCst);
        if let Some(registry) = registry.upgrade() {
            registry.remove(slot.id);
            let on_observer_thread =
                *lock(&registry.delivering_on) == Some(std::thread::current().id());
            if on_observer_thread {
                return;
            }
        }
        // Wait for a call in progress to end; later calls see `cancelled`.
        drop(lock(&slot.delivering));
    }

    /// Whether the subscription has been cancelled.
    pub fn is_cancelled(&self) -> bool {
        match &self.kind {
            SubscriptionKind::Observer { slot, .. } => slot.cancelled.load(Ordering::SeqCst),
            SubscriptionKind::Callback { cancelled, .. } => cancelled.load(Ordering::SeqCst),
        }
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

/// Where the store announces commits. Announcing never blocks and costs
/// nothing while nobody observes.
pub(crate) struct CommitSink(Arc<Registry>);

impl CommitListener for CommitSink {
    fn committed(&self, docs: Vec<DocRef>) {
        // A subscription made after this check reads the committed state
        // for its first result, so skipping is safe.
        if self.0.subscribed.load(Ordering::SeqCst) > 0 {
            self.0.post(|inbox| inbox.changed.extend(docs));
        }
    }
}

enum Target {
    Query {
        query: ResolvedQuery,
        observer: Arc<dyn QueryObserver>,
    },
    Document {
        doc: DocRef,
        observer: Arc<dyn DocumentObserver>,
    },
}

impl Target {
    fn affected_by(&self, doc: &DocRef) -> bool {
        match self {
            Target::Query { query, .. } => query.watches(&doc.space, &doc.collection),
            Target::Document { doc: watched, .. } => watched == doc,
        }
    }
}

struct Slot {
    id: u64,
    target: Target,
    cancelled: AtomicBool,
    /// Held by the observer task while it calls the observer, so that
    /// `cancel` can wait for the call to end.
    delivering: Mutex<()>,
}

/// The last result an observer received.
#[derive(PartialEq)]
enum Delivered {
    Documents(Vec<LocalDocument>),
    Document(Option<LocalDocument>),
}

/// A notice for the app, delivered in order by the observer task.
pub(crate) type Notice = Box<dyn FnOnce() + Send>;

/// What has happened since the observer task last looked.
#[derive(Default)]
struct Inbox {
    /// Documents changed by commits.
    changed: HashSet<DocRef>,
    /// Subscriptions that want their first result.
    fresh: HashSet<u64>,
    /// Notices, in the order they were posted.
    notices: Vec<Notice>,
}

impl Inbox {
    fn is_empty(&self) -> bool {
        self.changed.is_empty() && self.fresh.is_empty() && self.notices.is_empty()
    }
}

struct Registry {
    slots: Mutex<HashMap<u64, Arc<Slot>>>,
    /// How many subscriptions are active: commits are not even posted
    /// while there are none.
    subscribed: AtomicUsize,
    next_id: AtomicU64,
    inbox: Mutex<Inbox>,
    /// How to wake the observer task, once started.
    task: OnceLock<Arc<dyn TaskHandle>>,
    /// The thread delivering right now, if any (a cancel from inside an
    /// observer must not wait for itself).
    delivering_on: Mutex<Option<ThreadId>>,
    /// The last result each subscription received.
    delivered: Mutex<HashMap<u64, Delivered>>,
}

impl Registry {
    /// Adds to the inbox; wakes the task only when the inbox was empty (it
    /// takes everything at once, so a burst of commits costs one wake).
    fn post(&self, add: impl FnOnce(&mut Inbox)) {
        let was_empty = {
            let mut inbox = lock(&self.inbox);
            let was_empty = inbox.is_empty();
            add(&mut inbox);
            was_empty
        };
        if was_empty && let Some(task) = self.task.get() {
            task.wake();
        }
    }

    /// Takes all the news (the coalescing).
    fn take(&self) -> Inbox {
        std::mem::take(&mut *lock(&self.inbox))
    }

    fn remove(&self, id: u64) {
        if lock(&self.slots).remove(&id).is_some() {
            self.subscribed.fetch_sub(1, Ordering::SeqCst);
        }
    }
}

/// The observers of one client and the task that notifies them.
pub(crate) struct Observers {
    registry: Arc<Registry>,
}

impl Observers {
    /// The registry the observers will use, and the sink the store
    /// announces commits to.
    pub fn sink() -> (CommitSink, ObserverRegistry) {
        let registry = Arc::new(Registry {
            slots: Mutex::new(HashMap::new()),
            subscribed: AtomicUsize::new(0),
            next_id: AtomicU64::new(1),
            inbox: Mutex::new(Inbox::default()),
            task: OnceLock::new(),
            delivering_on: Mutex::new(None),
            delivered: Mutex::new(HashMap::new()),
        });
        (
            CommitSink(Arc::clone(&registry)),
            ObserverRegistry(registry),
        )
    }

    /// Starts the observer task on `background`; it reads through `store`.
    pub fn start(
        store: Arc<Store>,
        registry: ObserverRegistry,
        background: &dyn Background,
    ) -> Result<Observers, Error> {
        let registry = registry.0;
        let task = Arc::new(ObserverTask {
            store,
            registry: Arc::clone(&registry),
        });
        let handle = background.start("tandem-observers", task)?;
        let _ = registry.task.set(Arc::clone(&handle));
        // Anything posted before the task existed.
        handle.wake();
        Ok(Observers { registry })
    }

    /// Where the sync engine's notices for the app go.
    pub fn notices(&self) -> Notices {
        Notices(Arc::downgrade(&self.registry))
    }

    pub fn observe_query(
        &self,
        query: ResolvedQuery,
        observer: Arc<dyn QueryObserver>,
    ) -> Subscription {
        self.subscribe(Target::Query { query, observer })
    }

    pub fn observe_document(
        &self,
        doc: DocRef,
        observer: Arc<dyn DocumentObserver>,
    ) -> Subscription {
        self.subscribe(Target::Document { doc, observer })
    }

    fn subscribe(&self, target: Target) -> Subscription {
        let id = self.registry.next_id.fetch_add(1, Ordering::Relaxed);
        let slot = Arc::new(Slot {
            id,
            target,
            cancelled: AtomicBool::new(false),
            delivering: Mutex::new(()),
        });
        lock(&self.registry.slots).insert(id, Arc::clone(&slot));
        self.registry.subscribed.fetch_add(1, Ordering::SeqCst);
        self.registry.post(|inbox| {
            inbox.fresh.insert(id);
        });
        Subscription {
            kind: SubscriptionKind::Observer {
                slot,
                registry: Arc::downgrade(&self.registry),
            },
        }
    }

    /// Stops the observer task and waits for it (unless called from an
    /// observer). Idempotent.
    pub fn stop(&self) {
        if let Some(task) = self.registry.task.get() {
            task.stop();
        }
        let ids: Vec<u64> = lock(&self.registry.slots).keys().copied().collect();
        for id in ids {
            self.registry.remove(id);
        }
    }
}

/// The registry between [`Observers::sink`] and [`Observers::start`].
pub(crate) struct ObserverRegistry(Arc<Registry>);

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(std::sync::PoisonError::into_inner)
}

/// Posts notices for the app to the observer task.
#[derive(Clone)]
pub(crate) struct Notices(Weak<Registry>);

impl Notices {
    /// Delivers `notice` after those posted before it (dropped if the
    /// client is closed).
    pub fn post(&self, notice: Notice) {
        if let Some(registry) = self.0.upgrade() {
            registry.post(|inbox| inbox.notices.push(notice));
        }
    }
}

/// The observer task: delivers notices, then the results that changed.
struct ObserverTask {
    store: Arc<Store>,
    registry: Arc<Registry>,
}

impl BackgroundTask for ObserverTask {
    fn run_pending(&self) {
        let registry = &self.registry;
        let inbox = registry.take();
        if inbox.is_empty() {
            return;
        }
        *lock(&registry.delivering_on) = Some(std::thread::current().id());
        for notice in inbox.notices {
            notice();
        }
        let slots: Vec<Arc<Slot>> = lock(&registry.slots).values().cloned().collect();
        let mut delivered = lock(&registry.delivered);
        delivered.retain(|id, _| slots.iter().any(|s| s.id == *id));
        for slot in slots {
            let affected = inbox.fresh.contains(&slot.id)
                || inbox.changed.iter().any(|doc| slot.target.affected_by(doc));
            if affected && !slot.cancelled.load(Ordering::SeqCst) {
                deliver(&self.store, &slot, &mut delivered);
            }
        }
        drop(delivered);
        *lock(&registry.delivering_on) = None;
    }
}

/// Reads the slot's result and hands it to its observer if it changed.
fn deliver(store: &Store, slot: &Slot, delivered: &mut HashMap<u64, Delivered>) {
    let result = match &slot.target {
        Target::Query { query, .. } => store.query(query).map(Delivered::Documents),
        Target::Document { doc, .. } => store.get(doc).map(Delivered::Document),
    };
    let _calling = lock(&slot.delivering);
    if slot.cancelled.load(Ordering::SeqCst) {
        return;
    }
    match result {
        Err(Error::Closed) => {}
        Err(error) => match &slot.target {
            Target::Query { observer, .. } => observer.on_error(error),
            Target::Document { observer, .. } => observer.on_error(error),
        },
        Ok(result) => {
            if delivered.get(&slot.id) == Some(&result) {
                return;
            }
            match (&slot.target, &result) {
                (Target::Query { observer, .. }, Delivered::Documents(docs)) => {
                    observer.on_result(docs.clone());
                }
                (Target::Document { observer, .. }, Delivered::Document(doc)) => {
                    observer.on_document(doc.clone());
                }
                _ => {}
            }
            delivered.insert(slot.id, result);
        }
    }
}
