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
//!   an inbox; one observer thread takes everything in the inbox at once,
//!   re-runs each affected query once, and calls the observer only if the
//!   result differs from the last one it received. A burst of writes therefore yields the latest result,
//!   not every intermediate one, and a write that does not change a result
//!   yields nothing.
//! - Calls to one observer never overlap (there is one observer thread).
//!   Observers should return quickly; work that takes time belongs on the
//!   app's own queue.
//! - [`Subscription::cancel`], or dropping the subscription, stops it. When
//!   `cancel` returns, the observer is not being called and will not be
//!   called again (unless `cancel` was called from inside the observer
//!   itself, in which case only that call is still running).

use std::collections::{HashMap, HashSet};
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Condvar, Mutex, OnceLock, Weak};
use std::thread::{JoinHandle, ThreadId};

use crate::document::{DocRef, LocalDocument};
use crate::error::Error;
use crate::query::ResolvedQuery;
use crate::store::Store;

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
    /// A query or document observer on the observer thread.
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
            let on_observer_thread = registry
                .thread
                .get()
                .is_some_and(|id| *id == std::thread::current().id());
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
pub(crate) struct CommitSink(Option<Arc<Registry>>);

impl CommitSink {
    /// A sink nobody listens to.
    #[cfg(test)]
    pub fn none() -> CommitSink {
        CommitSink(None)
    }

    pub fn committed(&self, docs: Vec<DocRef>) {
        if let Some(registry) = &self.0 {
            // A subscription made after this check reads the committed
            // state for its first result, so skipping is safe.
            if registry.subscribed.load(Ordering::SeqCst) > 0 {
                registry.post(|inbox| inbox.changed.extend(docs));
            }
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
    /// Held by the observer thread while it calls the observer, so that
    /// `cancel` can wait for the call to end.
    delivering: Mutex<()>,
}

/// The last result an observer received.
#[derive(PartialEq)]
enum Delivered {
    Documents(Vec<LocalDocument>),
    Document(Option<LocalDocument>),
}

/// What has happened since the observer thread last looked.
#[derive(Default)]
struct Inbox {
    /// Documents changed by commits.
    changed: HashSet<DocRef>,
    /// Subscriptions that want their first result.
    fresh: HashSet<u64>,
    stop: bool,
    /// The thread is waiting for news (so posting must wake it; otherwise
    /// it will look at the inbox before it waits again).
    idle: bool,
}

impl Inbox {
    fn is_empty(&self) -> bool {
        self.changed.is_empty() && self.fresh.is_empty() && !self.stop
    }
}

struct Registry {
    slots: Mutex<HashMap<u64, Arc<Slot>>>,
    /// How many subscriptions are active: commits are not even posted
    /// while there are none.
    subscribed: AtomicUsize,
    next_id: AtomicU64,
    thread: OnceLock<ThreadId>,
    inbox: Mutex<Inbox>,
    news: Condvar,
}

impl Registry {
    /// Adds to the inbox; wakes the thread only if it is waiting, so a
    /// burst of commits while it works costs no wake-ups.
    fn post(&self, add: impl FnOnce(&mut Inbox)) {
        let mut inbox = lock(&self.inbox);
        add(&mut inbox);
        if inbox.idle {
            inbox.idle = false;
            self.news.notify_one();
        }
    }

    /// Waits for news and takes all of it (the coalescing).
    fn take(&self) -> Inbox {
        let mut inbox = lock(&self.inbox);
        while inbox.is_empty() {
            inbox.idle = true;
            inbox = self
                .news
                .wait(inbox)
                .unwrap_or_else(std::sync::PoisonError::into_inner);
        }
        inbox.idle = false;
        std::mem::take(&mut *inbox)
    }

    fn remove(&self, id: u64) {
        if lock(&self.slots).remove(&id).is_some() {
            self.subscribed.fetch_sub(1, Ordering::SeqCst);
        }
    }
}

/// The observers of one client and the thread that notifies them.
pub(crate) struct Observers {
    registry: Arc<Registry>,
    thread: Mutex<Option<JoinHandle<()>>>,
}

impl Observers {
    /// The registry the observers will use, and the sink the store
    /// announces commits to.
    pub fn sink() -> (CommitSink, ObserverRegistry) {
        let registry = Arc::new(Registry {
            slots: Mutex::new(HashMap::new()),
            subscribed: AtomicUsize::new(0),
            next_id: AtomicU64::new(1),
            thread: OnceLock::new(),
            inbox: Mutex::new(Inbox::default()),
            news: Condvar::new(),
        });
        (
            CommitSink(Some(Arc::clone(&registry))),
            ObserverRegistry(registry),
        )
    }

    /// Starts the observer thread, which reads through `store`.
    pub fn start(store: Arc<Store>, registry: ObserverRegistry) -> Result<Observers, Error> {
        let registry = registry.0;
        let thread_registry = Arc::clone(&registry);
        let thread = std::thread::Builder::new()
            .name("tandem-observers".into())
            .spawn(move || {
                let _ = thread_registry.thread.set(std::thread::current().id());
                run(&store, &thread_registry);
            })?;
        Ok(Observers {
            registry,
            thread: Mutex::new(Some(thread)),
        })
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

    /// Stops the observer thread and waits for it (unless called from an
    /// observer, which runs on that thread). Idempotent.
    pub fn stop(&self) {
        self.registry.post(|inbox| inbox.stop = true);
        let handle = lock(&self.thread).take();
        if let Some(handle) = handle
            && handle.thread().id() != std::thread::current().id()
        {
            let _ = handle.join();
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

fn run(store: &Store, registry: &Registry) {
    let mut delivered: HashMap<u64, Delivered> = HashMap::new();
    loop {
        let inbox = registry.take();
        if inbox.stop {
            return;
        }
        let slots: Vec<Arc<Slot>> = lock(&registry.slots).values().cloned().collect();
        delivered.retain(|id, _| slots.iter().any(|s| s.id == *id));
        for slot in slots {
            let affected = inbox.fresh.contains(&slot.id)
                || inbox.changed.iter().any(|doc| slot.target.affected_by(doc));
            if affected && !slot.cancelled.load(Ordering::SeqCst) {
                deliver(store, &slot, &mut delivered);
            }
        }
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
