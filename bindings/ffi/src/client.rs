//! The `Client` object: a thin wrapper of the core's client.
//!
//! Every method is one call into [`tandem_core::Client`] plus conversions:
//! records in, records out, core errors mapped in [`crate::error`], each
//! call guarded so a panic comes back as [`TandemError::Internal`].
//! Local operations (writes, reads, queries) are synchronous: they are
//! SQLite transactions of a millisecond or less and the app wants their
//! result at once. Opening is async because it may migrate the database
//! and rebuild views. The sync engine's operations (`sync_now`,
//! `sync_once`) will be async, running on the bindings' runtime.

use std::sync::Arc;

use crate::auth::TokenProvider;
use crate::config::{ClientConfig, CollectionPolicy};
use crate::document::{DocKey, Document, documents};
use crate::error::{TandemError, guard};
use crate::observe::{
    ActiveSubscriptions, DocumentObserver, DocumentObserverBridge, QueryObserver,
    QueryObserverBridge, StatusObserver, Subscription, deliver_status,
};
use crate::query::Query;
use crate::runtime;
use crate::status::{PendingMutation, SyncStatus};

/// A device's handle on Tandem. Open one per data directory and share it
/// across the app; every method may be called from any thread.
#[derive(uniffi::Object)]
pub struct Client {
    pub(crate) inner: Arc<tandem_core::Client>,
    subscriptions: Arc<ActiveSubscriptions>,
    #[expect(
        dead_code,
        reason = "handed to the core when its sync engine takes a token provider"
    )]
    token_provider: Option<Arc<dyn TokenProvider>>,
}

#[uniffi::export]
impl Client {
    /// Opens (creating if needed) the device in `config.data_dir`.
    /// `token_provider` supplies the user token for syncing; none keeps the
    /// device local. Runs on the bindings' runtime, off the caller's thread.
    #[uniffi::constructor(default(token_provider = None))]
    pub async fn open(
        config: ClientConfig,
        token_provider: Option<Arc<dyn TokenProvider>>,
    ) -> Result<Arc<Client>, TandemError> {
        let inner = runtime::blocking(move || tandem_core::Client::open(config.into())).await?;
        tracing::info!(target: "tandem_ffi", device = %inner.device_id(), "client opened");
        Ok(Arc::new(Client {
            inner: Arc::new(inner),
            subscriptions: Arc::default(),
            token_provider,
        }))
    }

    /// This device's id: generated when the data directory was first used,
    /// the same ever after.
    pub fn device_id(&self) -> String {
        self.inner.device_id()
    }

    /// The user this device belongs to.
    pub fn user_id(&self) -> String {
        self.inner.user_id()
    }

    /// The id of the user's personal space, where documents go when no
    /// space is named.
    pub fn personal_space(&self) -> String {
        self.inner.personal_space()
    }

    /// Replaces the document with `fields_json` (a JSON object), creating
    /// it if needed. Returns the new local view.
    pub fn put(&self, key: DocKey, fields_json: String) -> Result<Document, TandemError> {
        guard(|| self.inner.put(key.into(), &fields_json).map(Document::from))
    }

    /// Changes the fields named in `fields_json` (a JSON object); a `null`
    /// value removes the field.
    pub fn patch(&self, key: DocKey, fields_json: String) -> Result<Document, TandemError> {
        guard(|| {
            self.inner
                .patch(key.into(), &fields_json)
                .map(Document::from)
        })
    }

    /// Deletes the document; it remains as a tombstone (`deleted`) so the
    /// delete syncs.
    pub fn delete(&self, key: DocKey) -> Result<Document, TandemError> {
        guard(|| self.inner.delete(key.into()).map(Document::from))
    }

    /// Adds the values of `values_json` (a JSON array) to the set field
    /// `field`, which the collection's policy must declare as a set.
    pub fn set_add(
        &self,
        key: DocKey,
        field: String,
        values_json: String,
    ) -> Result<Document, TandemError> {
        guard(|| {
            self.inner
                .set_add(key.into(), &field, &values_json)
                .map(Document::from)
        })
    }

    /// Removes the values of `values_json` (a JSON array) from the set
    /// field `field`.
    pub fn set_remove(
        &self,
        key: DocKey,
        field: String,
        values_json: String,
    ) -> Result<Document, TandemError> {
        guard(|| {
            self.inner
                .set_remove(key.into(), &field, &values_json)
                .map(Document::from)
        })
    }

    /// Applies the operation named `operation` (`put`, `patch`, `delete`,
    /// `set_add`, `set_remove`), for callers that carry operations as
    /// text. `payload_json` is the fields object for `put` and `patch`,
    /// `{"field": name, "values": [...]}` for the set operations, and is
    /// ignored for `delete`.
    pub fn mutate(
        &self,
        key: DocKey,
        operation: String,
        payload_json: String,
    ) -> Result<Document, TandemError> {
        guard(|| {
            self.inner
                .mutate(key.into(), &operation, &payload_json)
                .map(Document::from)
        })
    }

    /// The local view of a document: none if the device has never seen it;
    /// a tombstone (`deleted`) if it is deleted.
    pub fn get(&self, key: DocKey) -> Result<Option<Document>, TandemError> {
        guard(|| {
            self.inner
                .get(key.into())
                .map(|doc| doc.map(Document::from))
        })
    }

    /// The live documents matching `query`, in its order.
    pub fn query(&self, query: Query) -> Result<Vec<Document>, TandemError> {
        guard(|| self.inner.query(query.into()).map(documents))
    }

    /// Calls `observer` with the result of `query` now and after every
    /// commit that changes it, until the subscription is cancelled or
    /// released. A bad query fails here, not in the observer.
    pub fn observe_query(
        &self,
        query: Query,
        observer: Box<dyn QueryObserver>,
    ) -> Result<Arc<Subscription>, TandemError> {
        let observer = Arc::new(QueryObserverBridge(observer));
        guard(|| self.inner.observe_query(query.into(), observer))
            .map(|inner| Subscription::new(Some(inner), &self.subscriptions))
    }

    /// Calls `observer` with the document's local view now and after every
    /// commit that changes it, until the subscription is cancelled or
    /// released.
    pub fn observe_document(
        &self,
        key: DocKey,
        observer: Box<dyn DocumentObserver>,
    ) -> Result<Arc<Subscription>, TandemError> {
        let observer = Arc::new(DocumentObserverBridge(observer));
        guard(|| self.inner.observe_document(key.into(), observer))
            .map(|inner| Subscription::new(Some(inner), &self.subscriptions))
    }

    /// Calls `observer` with the sync status now and after each change,
    /// until the subscription is cancelled or released.
    ///
    /// This build has no sync engine, so the status does not change by
    /// itself: the observer receives the current status once. The
    /// signature is the one the engine's status updates will use.
    pub fn observe_status(
        &self,
        observer: Box<dyn StatusObserver>,
    ) -> Result<Arc<Subscription>, TandemError> {
        let status = self.status()?;
        deliver_status(observer.as_ref(), status);
        Ok(Subscription::new(None, &self.subscriptions))
    }

    /// Declares an index on `fields` (in that order) of `collection`, so
    /// queries can filter and order on them. Persisted; declaring an
    /// existing index does nothing, so declaring on every start is fine.
    /// Put the fields compared with equality first and the one to order by
    /// last.
    pub fn declare_index(
        &self,
        collection: String,
        fields: Vec<String>,
    ) -> Result<(), TandemError> {
        guard(|| self.inner.declare_index(&collection, fields))
    }

    /// Stores the merge policy of `collection` (the server announces the
    /// policies; an app seeds the ones it ships with, for example set
    /// fields, without which `set_add` is refused).
    pub fn set_collection_policy(
        &self,
        collection: String,
        policy: CollectionPolicy,
    ) -> Result<(), TandemError> {
        guard(|| self.inner.set_collection_policy(&collection, policy.into()))
    }

    /// Every outbox entry, in the order they will be sent.
    pub fn pending_mutations(&self) -> Result<Vec<PendingMutation>, TandemError> {
        guard(|| {
            self.inner
                .pending_mutations()
                .map(|list| list.into_iter().map(PendingMutation::from).collect())
        })
    }

    /// Connection, outbox counts and cursors.
    pub fn status(&self) -> Result<SyncStatus, TandemError> {
        guard(|| self.inner.status().map(SyncStatus::from))
    }

    /// How many subscriptions of this client are neither cancelled nor
    /// released. For diagnostics: a number that only grows is a leaked
    /// observer.
    pub fn active_subscriptions(&self) -> u64 {
        self.subscriptions.get()
    }

    /// Stops the observers and closes the database. Later calls fail with
    /// `Closed`; subscriptions still held stay inert until released.
    /// Idempotent. (In Kotlin this is `shutdown()`: `close()` there
    /// releases the object's handle, as for every UniFFI object.)
    pub fn close(&self) {
        self.inner.close();
        tracing::info!(target: "tandem_ffi", device = %self.inner.device_id(), "client closed");
    }
}

impl std::fmt::Debug for Client {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Client")
            .field("inner", &self.inner)
            .finish()
    }
}
