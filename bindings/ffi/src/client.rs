//! The `Client` object: a thin wrapper of the core's client.
//!
//! Every method is one call into [`tandem_core::Client`] plus conversions:
//! records in, records out, core errors mapped in [`crate::error`], each
//! call guarded so a panic comes back as [`TandemError::Internal`].
//! Local operations (writes, reads, queries) are synchronous: they are
//! SQLite transactions of a millisecond or less and the app wants their
//! result at once. Opening is async because it may migrate the database
//! and rebuild views; the calls that talk to the server (`start_sync`,
//! `sync_once`, spaces) are async and run on the bindings' runtime, where
//! the sync engine's tasks live.

use std::sync::Arc;

use std::time::Duration;

use crate::auth::{CredentialStore, CredentialStoreBridge, TokenProvider, TokenProviderBridge};
use crate::config::{ClientConfig, CollectionPolicy};
use crate::conflict::{ConflictHandler, ConflictHandlerBridge, ConflictRecord};
use crate::document::{DocKey, Document, documents};
use crate::error::{TandemError, guard};
use crate::observe::{
    ActiveSubscriptions, DocumentObserver, DocumentObserverBridge, QueryObserver,
    QueryObserverBridge, StatusObserver, StatusObserverBridge, Subscription,
};
use crate::query::Query;
use crate::runtime;
use crate::status::{PendingMutation, SyncStatus};
use crate::sync::{SpaceInfo, SyncConfig, SyncOutcome};

/// A device's handle on Tandem. Open one per data directory and share it
/// across the app; every method may be called from any thread.
#[derive(uniffi::Object)]
pub struct Client {
    pub(crate) inner: Arc<tandem_core::Client>,
    pub(crate) subscriptions: Arc<ActiveSubscriptions>,
}

#[uniffi::export]
impl Client {
    /// Opens (creating if needed) the device in `config.data_dir`. The
    /// device is local until [`Client::start_sync`]. Runs on the bindings'
    /// runtime, off the caller's thread.
    ///
    /// With `credential_store`, the device's tokens are kept there (the
    /// Keychain, the Android Keystore) and never in the database file;
    /// without it, in the database.
    #[uniffi::constructor(default(credential_store = None))]
    pub async fn open(
        config: ClientConfig,
        credential_store: Option<Arc<dyn CredentialStore>>,
    ) -> Result<Arc<Client>, TandemError> {
        let mut core = tandem_core::ClientConfig::try_from(config)?;
        core.credential_store = credential_store.map(|store| {
            Arc::new(CredentialStoreBridge(store)) as Arc<dyn tandem_core::CredentialStore>
        });
        let inner = runtime::blocking(move || tandem_core::Client::open(core)).await?;
        tracing::info!(target: "tandem_ffi", device = %inner.device_id(), "client opened");
        Ok(Arc::new(Client {
            inner: Arc::new(inner),
            subscriptions: Arc::default(),
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
    ///
    /// A document evicted to keep the database within `cache_limit_bytes`
    /// fails with `Network` (only the server has it): `fetch` gets it
    /// again.
    pub fn get(&self, key: DocKey) -> Result<Option<Document>, TandemError> {
        guard(|| {
            self.inner
                .get(key.into())
                .map(|doc| doc.map(Document::from))
        })
    }

    /// The document, fetched from the server if it was evicted from this
    /// device (see `ClientConfig::cache_limit_bytes`); otherwise the same
    /// as [`Client::get`]. Fails with `Network` if it was evicted and the
    /// server cannot be reached.
    pub async fn fetch(&self, key: DocKey) -> Result<Option<Document>, TandemError> {
        let inner = Arc::clone(&self.inner);
        runtime::spawn(async move {
            let doc = inner.fetch(key.into()).await?;
            Ok::<_, tandem_core::Error>(doc.map(Document::from))
        })
        .await
    }

    /// Evicts documents now if the database is over
    /// `ClientConfig::cache_limit_bytes` (syncing does this after each
    /// catch-up; call it, for example, when the app goes to the
    /// background). Returns how many documents were evicted.
    pub fn enforce_cache_limit(&self) -> Result<u64, TandemError> {
        guard(|| self.inner.enforce_cache_limit())
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
            .map(|inner| Subscription::new(inner, &self.subscriptions))
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
            .map(|inner| Subscription::new(inner, &self.subscriptions))
    }

    /// Calls `observer` with the sync status now and after each change, and
    /// with each write that becomes failed, until the subscription is
    /// cancelled or released.
    pub fn observe_status(
        &self,
        observer: Box<dyn StatusObserver>,
    ) -> Result<Arc<Subscription>, TandemError> {
        let observer = Arc::new(StatusObserverBridge(observer));
        guard(|| self.inner.observe_status(observer))
            .map(|inner| Subscription::new(inner, &self.subscriptions))
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

    /// The sync status: connection, outbox counts, last synced time,
    /// cursors, catch-up progress, the last error.
    pub fn status(&self) -> Result<SyncStatus, TandemError> {
        guard(|| self.inner.status().map(SyncStatus::from))
    }

    /// Starts syncing with the server in `config`: registers the device if
    /// it has no credentials (with a user token from `token_provider`),
    /// connects, catches up, pushes the outbox, and keeps doing so
    /// (reconnecting with backoff) until [`Client::stop_sync`] or
    /// [`Client::close`]. Starting again replaces the running sync.
    pub async fn start_sync(
        &self,
        config: SyncConfig,
        token_provider: Arc<dyn TokenProvider>,
    ) -> Result<(), TandemError> {
        let (inner, tokens) = (Arc::clone(&self.inner), TokenProviderBridge(token_provider));
        runtime::spawn(async move { inner.start_sync(config.into(), Arc::new(tokens)).await }).await
    }

    /// Stops syncing (closing the connection). Local use goes on.
    pub async fn stop_sync(&self) -> Result<(), TandemError> {
        let inner = Arc::clone(&self.inner);
        runtime::spawn(async move {
            inner.stop_sync().await;
            Ok::<_, TandemError>(())
        })
        .await
    }

    /// Whether [`Client::start_sync`] is in effect.
    pub fn is_syncing(&self) -> bool {
        self.inner.is_syncing()
    }

    /// Connects now if offline (resetting the backoff) and sends what can
    /// be sent. Does nothing if syncing is not started.
    pub fn sync_now(&self) {
        self.inner.sync_now();
    }

    /// Tells the engine whether the host has a network (from the platform's
    /// connectivity callbacks). `false` closes the connection and stops
    /// reconnect attempts; `true` connects at once with the backoff reset.
    pub fn set_network_available(&self, available: bool) {
        self.inner.set_network_available(available);
    }

    /// A bounded sync for background tasks (BGTaskScheduler, WorkManager):
    /// connects if needed, pushes the outbox and pulls until caught up, and
    /// returns when nothing more can be done now or after `timeout_ms`.
    /// Needs [`Client::start_sync`] first.
    pub async fn sync_once(&self, timeout_ms: u64) -> Result<SyncOutcome, TandemError> {
        let inner = Arc::clone(&self.inner);
        let timeout = Duration::from_millis(timeout_ms);
        runtime::spawn(async move { inner.sync_once(timeout).await.map(SyncOutcome::from) }).await
    }

    /// The writes the server refused (or whose attempts ran out), in outbox
    /// order.
    pub fn failed_mutations(&self) -> Result<Vec<PendingMutation>, TandemError> {
        guard(|| {
            self.inner
                .failed_mutations()
                .map(|list| list.into_iter().map(PendingMutation::from).collect())
        })
    }

    /// Queues a failed write again (its effect returns to the view).
    /// Returns whether a failed write with this id existed.
    pub fn retry_mutation(&self, mutation_id: String) -> Result<bool, TandemError> {
        guard(|| self.inner.retry_mutation(&mutation_id))
    }

    /// Deletes an outbox entry, failed or not, and rebuilds its document's
    /// view without it. Returns whether it existed.
    pub fn discard_mutation(&self, mutation_id: String) -> Result<bool, TandemError> {
        guard(|| self.inner.discard_mutation(&mutation_id))
    }

    /// The newest `limit` resolved conflicts, newest first.
    pub fn conflicts(&self, limit: u32) -> Result<Vec<ConflictRecord>, TandemError> {
        guard(|| {
            self.inner
                .conflicts(limit)
                .map(|list| list.into_iter().map(ConflictRecord::from).collect())
        })
    }

    /// Sets (or, with none, removes) the handler of conflicts in
    /// `server_wins` and `manual` collections.
    pub fn set_conflict_handler(&self, handler: Option<Box<dyn ConflictHandler>>) {
        let handler = handler.map(|h| Arc::new(ConflictHandlerBridge(h)) as _);
        self.inner.set_conflict_handler(handler);
    }

    /// Creates a shared space owned by this user.
    pub async fn create_space(&self, name: String) -> Result<SpaceInfo, TandemError> {
        let inner = Arc::clone(&self.inner);
        runtime::spawn(async move { inner.create_space(&name).await.map(SpaceInfo::from) }).await
    }

    /// Adds `user` to the shared space `space` (the owner only).
    pub async fn add_member(&self, space: String, user: String) -> Result<SpaceInfo, TandemError> {
        let inner = Arc::clone(&self.inner);
        runtime::spawn(async move { inner.add_member(&space, &user).await.map(SpaceInfo::from) })
            .await
    }

    /// Removes `user` from `space` (the owner removes anyone else; a member
    /// removes themself).
    pub async fn remove_member(
        &self,
        space: String,
        user: String,
    ) -> Result<SpaceInfo, TandemError> {
        let inner = Arc::clone(&self.inner);
        runtime::spawn(async move {
            inner
                .remove_member(&space, &user)
                .await
                .map(SpaceInfo::from)
        })
        .await
    }

    /// The spaces this user belongs to, personal space first.
    pub async fn spaces(&self) -> Result<Vec<SpaceInfo>, TandemError> {
        let inner = Arc::clone(&self.inner);
        runtime::spawn(async move {
            let spaces = inner.spaces().await?;
            Ok::<_, tandem_core::Error>(spaces.into_iter().map(SpaceInfo::from).collect())
        })
        .await
    }

    /// How many subscriptions of this client are neither cancelled nor
    /// released. For diagnostics: a number that only grows is a leaked
    /// observer.
    pub fn active_subscriptions(&self) -> u64 {
        self.subscriptions.get()
    }

    /// Signs this device out: stops syncing, removes its credentials (from
    /// the credential store too), closes the client and deletes its
    /// database with every document and the outbox. Returns how many
    /// writes had not been confirmed by the server and are now gone (show
    /// it before confirming a sign-out). To end the device's credentials
    /// on the server too, call `revoke_device(device_id())` first while
    /// online. Later calls fail with `Closed`.
    pub fn wipe(&self) -> Result<u64, TandemError> {
        guard(|| self.inner.wipe())
    }

    /// Stops syncing and the observers and closes the database. Later calls fail with
    /// `Closed`; subscriptions still held stay inert until released.
    /// Idempotent. (In Kotlin this is `shutdown()`: `close()` there
    /// releases the object's handle, as for every UniFFI object.)
    pub fn close(&self) {
        self.inner.close();
        tracing::info!(target: "tandem_ffi", device = %self.inner.device_id(), "client closed");
    }
}

/// Changes the key the database in `data_dir` is encrypted with:
/// `current_key` is its key now (none: plain SQLite), `new_key` the key it
/// gets (none: decrypt it). Every page is written again under the new key;
/// a crash leaves the old or the new database, whole. No client may have
/// the directory open. A wrong `current_key` fails with `InvalidInput`
/// (`wrong_key`) and changes nothing.
#[uniffi::export]
pub async fn change_encryption_key(
    data_dir: String,
    current_key: Option<Vec<u8>>,
    new_key: Option<Vec<u8>>,
) -> Result<(), TandemError> {
    runtime::blocking(move || {
        let current = crate::config::database_key(current_key)?;
        let new = crate::config::database_key(new_key)?;
        tandem_core::Client::change_encryption_key(&data_dir, current, new)
    })
    .await
}

impl std::fmt::Debug for Client {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Client")
            .field("inner", &self.inner)
            .finish()
    }
}
