//! The `Client`: what an app holds.
//!
//! Shaped for the FFI layer from the start: every method takes `&self`
//! (the client is `Send + Sync` and meant to be shared as `Arc<Client>`),
//! parameters and results are owned plain types, documents come in as JSON
//! text and go out as [`LocalDocument`], observers are trait objects, and
//! there are no lifetimes or generics in the public methods.
//!
//! Local use needs only [`Client::open`]. Syncing starts with
//! [`Client::start_sync`], which runs the sync engine (`crate::sync`) on
//! the caller's tokio runtime until [`Client::stop_sync`] or
//! [`Client::close`]. The async methods are plain `async fn`s: the FFI
//! layer owns a runtime and awaits them there.

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex, PoisonError, RwLock};
use std::time::Duration;

use serde::Serialize;
use serde_json::{Map, Value};
use tandem_protocol::api::{DeviceList, PushHint, PushToken};
use tandem_protocol::wire::{Claim, Guard, GuardVerdict, Handoff, Release};
use tandem_protocol::{
    ClientMessage, Collection, CollectionPolicy, ErrorCode, RoleFence, ServerMessage,
};

use crate::coordination::{DeviceInfo, DevicesObserver, GuardOutcome, RoleInfo, RoleObserver};

use crate::config::{ClientConfig, DatabaseKey};
use crate::credentials::CredentialVault;
use crate::document::{DocKey, DocRef, LocalDocument, WriteText, refuse_inexact_numbers};
use crate::error::{Error, json_type_name};
use crate::observe::{DocumentObserver, Observers, QueryObserver, Subscription};
use crate::query::{Query, ResolvedQuery};
use crate::store::{
    CheckpointSettings, ConflictRecord, OutboxState, PendingMutation, Store, Write,
};
use crate::sync::driver::{Credentials, DeviceLabel, Settling, Shared, SyncHandle};
use crate::sync::endpoint::Endpoint;
use crate::sync::engine::{ConflictSlot, Engine, Event, SystemClock};
use crate::sync::{
    ConflictHandler, SeededJitter, StatusObserver, SyncErrorKind, SyncStatus, SyncTuning,
    TlsSettings, TokenProvider,
};

/// The state of the link to the sync server.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum ConnectionState {
    /// Not connected (and, in this build, never: there is no sync engine
    /// yet).
    Offline,
    /// Connecting or handshaking.
    Connecting,
    /// Connected and syncing.
    Online,
}

/// What the device knows about its sync state.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Status {
    /// The link to the server.
    pub connection: ConnectionState,
    /// Outbox entries waiting to reach the server (queued, in flight or
    /// retrying).
    pub pending: u64,
    /// Outbox entries the server refused, waiting for the app to retry or
    /// discard them.
    pub failed: u64,
    /// When the device last finished syncing, in ms since the Unix epoch.
    pub last_synced: Option<u64>,
    /// Per space, the last server revision applied.
    pub cursors: BTreeMap<String, u64>,
}

/// The write operations, by the names the protocol, the CLI and the FFI
/// use.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Operation {
    /// Replace the whole document.
    Put,
    /// Change some fields; `null` removes a field.
    Patch,
    /// Delete the document.
    Delete,
    /// Add values to a set field.
    SetAdd,
    /// Remove values from a set field.
    SetRemove,
}

impl Operation {
    /// Parses an operation name.
    pub fn parse(name: &str) -> Result<Operation, Error> {
        Ok(match name {
            "put" => Operation::Put,
            "patch" => Operation::Patch,
            "delete" => Operation::Delete,
            "set_add" => Operation::SetAdd,
            "set_remove" => Operation::SetRemove,
            other => return Err(Error::UnknownOperation(other.chars().take(64).collect())),
        })
    }
}

/// How to reach the sync server ([`Client::start_sync`]).
#[derive(Debug, Clone, PartialEq)]
pub struct SyncConfig {
    /// The server: `https://host[:port][/prefix]`, or `http://` for a
    /// development server; the `wss://` and `ws://` forms of the same
    /// address mean the same server. Checked at [`Client::start_sync`].
    pub server_url: String,
    /// Extra trusted roots and public-key pins for an `https://` server
    /// (see [`crate::sync::tls`] for what each platform trusts by itself).
    pub tls: TlsSettings,
    /// The platform the device reports ("ios", "android", "cli", ...).
    pub platform: String,
    /// The app's version, as the device reports it.
    pub app_version: String,
    /// Timings and limits of the engine; the defaults are the documented
    /// behaviour.
    pub tuning: SyncTuning,
}

impl SyncConfig {
    /// Defaults for `server_url`.
    pub fn new(server_url: &str) -> SyncConfig {
        SyncConfig {
            server_url: server_url.to_owned(),
            tls: TlsSettings::default(),
            platform: std::env::consts::OS.to_owned(),
            app_version: env!("CARGO_PKG_VERSION").to_owned(),
            tuning: SyncTuning::default(),
        }
    }
}

/// How a bounded sync ([`Client::sync_once`]) ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(tag = "result", rename_all = "snake_case")]
pub enum SyncOutcome {
    /// Caught up with every space, and the outbox is empty.
    CaughtUp,
    /// Time ran out, or entries remain that cannot be sent now (retrying
    /// later, or failed).
    PendingLeft {
        /// Entries not yet confirmed.
        pending: u64,
        /// Failed entries.
        failed: u64,
    },
}

/// A space and its members, as the server lists them.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct SpaceInfo {
    /// The space's id (`personal:<user>` or a shared space's name).
    pub space: String,
    /// Its owner.
    pub owner: String,
    /// Its members, sorted (empty in [`Client::spaces`], which lists spaces
    /// only).
    pub members: Vec<String>,
}

/// A device's handle on Tandem. Open one per data directory and share it.
pub struct Client {
    store: Arc<Store>,
    credentials: CredentialVault,
    observers: Observers,
    device_name: String,
    sync: Mutex<Option<Arc<SyncHandle>>>,
    shared: Arc<Shared>,
    conflicts: ConflictSlot,
    network_available: std::sync::atomic::AtomicBool,
}

impl Client {
    /// Opens (creating if needed) the device in `config.data_dir`.
    pub fn open(config: ClientConfig) -> Result<Client, Error> {
        let (sink, registry) = Observers::sink();
        let store = Arc::new(Store::open(&config, CheckpointSettings::default(), sink)?);
        let credentials = CredentialVault::new(Arc::clone(&store), config.credential_store.clone());
        let observers = match credentials
            .adopt_database_credentials()
            .and_then(|()| Observers::start(Arc::clone(&store), registry))
        {
            Ok(observers) => observers,
            Err(e) => {
                store.close();
                return Err(e);
            }
        };
        Ok(Client {
            store,
            credentials,
            observers,
            device_name: config.device_name,
            sync: Mutex::new(None),
            shared: Arc::new(Shared::default()),
            conflicts: Arc::new(RwLock::new(None)),
            network_available: std::sync::atomic::AtomicBool::new(true),
        })
    }

    /// Changes the key the database in `data_dir` is encrypted with:
    /// `current` is the key it has now (`None`: plain), `new` the key it
    /// gets (`None`: decrypt). Every page is written again under the new
    /// key; a crash leaves either the old or the new database, whole. No
    /// client may have the directory open. A wrong `current` is
    /// [`Error::WrongKey`], and nothing changes.
    pub fn change_encryption_key(
        data_dir: &str,
        current: Option<DatabaseKey>,
        new: Option<DatabaseKey>,
    ) -> Result<(), Error> {
        crate::store::change_key(
            std::path::Path::new(data_dir),
            current.as_ref(),
            new.as_ref(),
        )
    }

    /// This device's id: generated when the data directory was first used,
    /// the same ever after.
    pub fn device_id(&self) -> String {
        self.store.identity().device_id.to_string()
    }

    /// The user this device belongs to.
    pub fn user_id(&self) -> String {
        self.store.identity().user_id.to_string()
    }

    /// The id of the user's personal space, where documents go when no space
    /// is named.
    pub fn personal_space(&self) -> String {
        self.store.identity().personal_space.to_string()
    }

    /// Replaces the document with the fields in `fields_json` (a JSON
    /// object), creating it if needed.
    pub fn put(&self, key: DocKey, fields_json: &str) -> Result<LocalDocument, Error> {
        let doc = self.resolve(&key)?;
        let fields = parse_object(fields_json, WriteText::Fields)?;
        self.write(&doc, Write::Put(fields))
    }

    /// Changes the fields named in `fields_json` (a JSON object); a `null`
    /// value removes the field.
    pub fn patch(&self, key: DocKey, fields_json: &str) -> Result<LocalDocument, Error> {
        let doc = self.resolve(&key)?;
        let fields = parse_object(fields_json, WriteText::Fields)?;
        self.write(&doc, Write::Patch(fields))
    }

    /// Deletes the document; it remains as a tombstone (`deleted: true`)
    /// so the delete can sync.
    pub fn delete(&self, key: DocKey) -> Result<LocalDocument, Error> {
        let doc = self.resolve(&key)?;
        self.write(&doc, Write::Delete)
    }

    /// Adds the values of `values_json` (a JSON array) to the set field
    /// `field`. The collection's policy must declare `field` as a set.
    pub fn set_add(
        &self,
        key: DocKey,
        field: &str,
        values_json: &str,
    ) -> Result<LocalDocument, Error> {
        let doc = self.resolve(&key)?;
        let values = parse_array(values_json, field)?;
        self.write(
            &doc,
            Write::SetAdd {
                field: field.to_owned(),
                values,
            },
        )
    }

    /// Removes the values of `values_json` (a JSON array) from the set field
    /// `field`: the adds of them this device has seen.
    pub fn set_remove(
        &self,
        key: DocKey,
        field: &str,
        values_json: &str,
    ) -> Result<LocalDocument, Error> {
        let doc = self.resolve(&key)?;
        let values = parse_array(values_json, field)?;
        self.write(
            &doc,
            Write::SetRemove {
                field: field.to_owned(),
                values,
            },
        )
    }

    /// Applies the operation named `operation` (`put`, `patch`, `delete`,
    /// `set_add`, `set_remove`): the entry point for callers that carry
    /// operations as text. `payload_json` is the fields object for `put`
    /// and `patch`, `{"field": name, "values": [...]}` for the set
    /// operations, and is ignored for `delete`.
    pub fn mutate(
        &self,
        key: DocKey,
        operation: &str,
        payload_json: &str,
    ) -> Result<LocalDocument, Error> {
        match Operation::parse(operation)? {
            Operation::Put => self.put(key, payload_json),
            Operation::Patch => self.patch(key, payload_json),
            Operation::Delete => self.delete(key),
            op @ (Operation::SetAdd | Operation::SetRemove) => {
                let mut payload = parse_any_object(payload_json)?;
                let field = match payload.remove("field") {
                    Some(Value::String(field)) => field,
                    Some(other) => {
                        return Err(Error::InvalidPayload(format!(
                            "\"field\" must be a string, got {}",
                            json_type_name(&other)
                        )));
                    }
                    None => return Err(Error::InvalidPayload("missing \"field\"".into())),
                };
                let values = match payload.remove("values") {
                    Some(Value::Array(values)) => values,
                    Some(other) => {
                        return Err(Error::NotAnArray {
                            found: json_type_name(&other),
                        });
                    }
                    None => return Err(Error::InvalidPayload("missing \"values\"".into())),
                };
                refuse_inexact_numbers(payload_json, WriteText::SetPayload(&field))?;
                let doc = self.resolve(&key)?;
                let write = if op == Operation::SetAdd {
                    Write::SetAdd { field, values }
                } else {
                    Write::SetRemove { field, values }
                };
                self.write(&doc, write)
            }
        }
    }

    /// The local view of a document: `None` if the device has never seen
    /// it; a tombstone (`deleted: true`) if it is deleted.
    ///
    /// A document evicted to keep the database within its budget
    /// ([`ClientConfig::cache_limit_bytes`](crate::ClientConfig)) is
    /// [`Error::NotLocal`]: [`Client::fetch`] gets it again.
    pub fn get(&self, key: DocKey) -> Result<Option<LocalDocument>, Error> {
        let doc = self.resolve(&key)?;
        let found = self.store.get(&doc)?;
        if found.is_none() && self.store.evicted_version(&doc)?.is_some() {
            return Err(Error::NotLocal {
                collection: doc.collection.to_string(),
                id: doc.id.to_string(),
            });
        }
        self.store.touch(&doc);
        Ok(found)
    }

    /// Like [`Client::get`], but a document evicted from this device is
    /// fetched from the server again (and is local from then on). Offline,
    /// or without [`Client::start_sync`], an evicted document is
    /// [`Error::NotLocal`].
    pub async fn fetch(&self, key: DocKey) -> Result<Option<LocalDocument>, Error> {
        let doc = self.resolve(&key)?;
        if let Some(found) = self.store.get(&doc)? {
            self.store.touch(&doc);
            return Ok(Some(found));
        }
        let Some(version) = self.store.evicted_version(&doc)? else {
            return Ok(None);
        };
        let not_local = || Error::NotLocal {
            collection: doc.collection.to_string(),
            id: doc.id.to_string(),
        };
        let credentials = match self.sync_handle() {
            Ok(handle) => Arc::clone(&handle.credentials),
            Err(_) => return Err(not_local()),
        };
        let space = doc.space.to_string();
        // Versions are unique within a space, so the one change after
        // `version - 1` is this document at `version`.
        let page = credentials
            .with_access(|api, token| {
                let space = space.clone();
                async move { api.pull(&token, &space, version.saturating_sub(1), 1).await }
            })
            .await
            .map_err(|e| match e {
                Error::Network(_) => not_local(),
                other => other,
            })?;
        let change = page
            .changes
            .iter()
            .find(|c| c.collection == doc.collection && c.doc_id == doc.id)
            .ok_or_else(not_local)?;
        self.store.apply_conflict_document(&change.to_document())?;
        self.store.touch(&doc);
        self.store.get(&doc)
    }

    /// Evicts documents now if the database is over its budget (syncing
    /// does this after each catch-up). Returns how many were evicted.
    pub fn enforce_cache_limit(&self) -> Result<u64, Error> {
        let n = self.store.enforce_cache_limit()?;
        Ok(u64::try_from(n).unwrap_or(u64::MAX))
    }

    /// The live documents matching `query`, in its order.
    pub fn query(&self, query: Query) -> Result<Vec<LocalDocument>, Error> {
        let q = ResolvedQuery::resolve(&query, &self.store.identity().personal_space)?;
        self.store.query(&q)
    }

    /// Calls `observer` with the result of `query` now and after every
    /// commit that changes it, until the subscription is cancelled or
    /// dropped. The query is checked now: a bad query fails here, not in
    /// the observer.
    pub fn observe_query(
        &self,
        query: Query,
        observer: Arc<dyn QueryObserver>,
    ) -> Result<Subscription, Error> {
        let q = ResolvedQuery::resolve(&query, &self.store.identity().personal_space)?;
        self.store.check_query(&q)?;
        self.ensure_open()?;
        Ok(self.observers.observe_query(q, observer))
    }

    /// Calls `observer` with the document's local view now and after every
    /// commit that changes it, until the subscription is cancelled or
    /// dropped.
    pub fn observe_document(
        &self,
        key: DocKey,
        observer: Arc<dyn DocumentObserver>,
    ) -> Result<Subscription, Error> {
        let doc = self.resolve(&key)?;
        self.ensure_open()?;
        Ok(self.observers.observe_document(doc, observer))
    }

    /// Declares an index on `fields` (in that order) of `collection`, so
    /// queries can filter and order on them. Persisted: declare once, or on
    /// every start (declaring an existing index does nothing). Put the
    /// fields compared with equality first and the field to order by last.
    pub fn declare_index(&self, collection: &str, fields: Vec<String>) -> Result<(), Error> {
        let collection = Collection::new(collection)?;
        self.store.declare_index(&collection, &fields)
    }

    /// Stores the merge policy of `collection` and rebuilds the views of
    /// its documents with pending writes. The sync engine will store the
    /// policies the server announces; until a device has synced once, an app
    /// can seed the policies it ships with (for example set fields, without
    /// which `set_add` is refused).
    pub fn set_collection_policy(
        &self,
        collection: &str,
        policy: CollectionPolicy,
    ) -> Result<(), Error> {
        let collection = Collection::new(collection)?;
        self.store.set_policy(&collection, &policy)
    }

    /// Every outbox entry, in the order they will be sent.
    pub fn pending_mutations(&self) -> Result<Vec<PendingMutation>, Error> {
        self.store.pending_mutations()
    }

    /// Connection, outbox counts and cursors.
    pub fn status(&self) -> Result<Status, Error> {
        let status = self.sync_status()?;
        Ok(Status {
            connection: status.connection,
            pending: status.pending,
            failed: status.failed,
            last_synced: status.last_synced,
            cursors: status.cursors,
        })
    }

    /// The whole sync status: connection, outbox counts, last synced time,
    /// cursors, catch-up progress, checksum mismatches, the last error.
    pub fn sync_status(&self) -> Result<SyncStatus, Error> {
        self.ensure_open()?;
        let (pending, failed) = self.store.outbox_counts()?;
        let (last_synced, checksum_mismatches) = self.store.sync_marks()?;
        let cursors = self
            .store
            .cursors()?
            .into_iter()
            .map(|(space, cursor)| (space, cursor.rev))
            .collect();
        let live = self.shared.status();
        Ok(SyncStatus {
            connection: live
                .as_ref()
                .map_or(ConnectionState::Offline, |s| s.connection),
            pending,
            failed,
            last_synced,
            cursors,
            catching_up: live
                .as_ref()
                .map(|s| s.catching_up.clone())
                .unwrap_or_default(),
            checksum_mismatches,
            last_error: live.and_then(|s| s.last_error),
        })
    }

    /// Calls `observer` with the sync status now and each time it changes,
    /// and with each mutation that fails, until the subscription is
    /// cancelled or dropped.
    pub fn observe_status(&self, observer: Arc<dyn StatusObserver>) -> Result<Subscription, Error> {
        let status = self.sync_status()?;
        let id = self.shared.add_observer(Arc::clone(&observer));
        observer.on_status(status);
        let shared = Arc::downgrade(&self.shared);
        Ok(Subscription::from_cancel(move || {
            if let Some(shared) = shared.upgrade() {
                shared.remove_observer(id);
            }
        }))
    }

    /// Starts syncing with the server in `config` on the current tokio
    /// runtime: registers the device if it has no credentials (with a user
    /// token from `tokens`), connects, catches up, pushes the outbox, and
    /// keeps doing so (reconnecting with backoff) until
    /// [`Client::stop_sync`] or [`Client::close`]. Starting again replaces
    /// the running sync.
    ///
    /// The server URL and the TLS settings are checked first: a bad one is
    /// [`Error::InvalidConfig`] at once, and the running sync (if any) is
    /// left as it was.
    pub async fn start_sync(
        &self,
        config: SyncConfig,
        tokens: Arc<dyn TokenProvider>,
    ) -> Result<(), Error> {
        self.ensure_open()?;
        let endpoint = Endpoint::parse(&config.server_url)?;
        let tls = config.tls.check()?;
        self.stop_sync().await;
        let engine = Engine::new(
            Arc::clone(&self.store),
            config.tuning.clone(),
            Arc::new(SystemClock),
            Box::new(SeededJitter::from_entropy()),
            Arc::clone(&self.conflicts),
        )?;
        let credentials = Arc::new(Credentials::new(
            Arc::clone(&self.store),
            self.credentials.clone(),
            &endpoint,
            &tls,
            tokens,
            DeviceLabel {
                name: self.device_name.clone(),
                platform: config.platform.clone(),
                app_version: config.app_version.clone(),
            },
        )?);
        let handle = SyncHandle::start(engine, credentials, Arc::clone(&self.shared));
        if !self
            .network_available
            .load(std::sync::atomic::Ordering::SeqCst)
        {
            handle.send(Event::NetworkChanged(false));
        }
        *lock(&self.sync) = Some(Arc::new(handle));
        Ok(())
    }

    /// Stops syncing (closing the connection). Local use goes on.
    pub async fn stop_sync(&self) {
        let handle = lock(&self.sync).take();
        if let Some(handle) = handle {
            handle.stop().await;
        }
        self.shared.clear();
    }

    /// Whether [`Client::start_sync`] is in effect.
    pub fn is_syncing(&self) -> bool {
        lock(&self.sync).is_some()
    }

    fn sync_handle(&self) -> Result<Arc<SyncHandle>, Error> {
        lock(&self.sync).clone().ok_or(Error::NotSyncing)
    }

    /// Connects now if offline (resetting the backoff) and sends what can be
    /// sent. Does nothing if syncing is not started.
    pub fn sync_now(&self) {
        if let Ok(handle) = self.sync_handle() {
            handle.send(Event::SyncNow);
        }
    }

    /// Tells the engine whether the host has a network. `false` closes the
    /// connection and stops reconnect attempts; `true` connects at once
    /// with the backoff reset. Kept across [`Client::start_sync`].
    pub fn set_network_available(&self, available: bool) {
        self.network_available
            .store(available, std::sync::atomic::Ordering::SeqCst);
        if let Ok(handle) = self.sync_handle() {
            handle.send(Event::NetworkChanged(available));
        }
    }

    /// A bounded sync for background tasks: connects if needed, pushes the
    /// outbox and pulls until caught up, and returns when nothing more can
    /// be done now or after `timeout`. Needs [`Client::start_sync`] first;
    /// syncing keeps running afterwards (stop it with
    /// [`Client::stop_sync`] when the background task ends).
    ///
    /// An error that retrying within `timeout` cannot mend ends it at once:
    /// [`Error::Tls`] (the server's certificate is not trusted),
    /// [`Error::Unauthorized`]. Unreachable servers are retried with
    /// backoff until `timeout`, then [`Error::Network`].
    pub async fn sync_once(&self, timeout: Duration) -> Result<SyncOutcome, Error> {
        let handle = self.sync_handle()?;
        handle.send(Event::SyncNow);
        let end = handle.wait_settled(timeout).await;
        let status = self.sync_status()?;
        if end != Settling::Settled
            && status.connection != ConnectionState::Online
            && let Some(error) = status.last_error
        {
            return Err(match error.kind {
                SyncErrorKind::Unauthorized => Error::Unauthorized(error.message),
                SyncErrorKind::Tls => Error::Tls(error.message),
                SyncErrorKind::Network => Error::Network(error.message),
                _ => Error::Network(error.to_string()),
            });
        }
        Ok(
            if end == Settling::Settled && status.pending == 0 && status.failed == 0 {
                SyncOutcome::CaughtUp
            } else {
                SyncOutcome::PendingLeft {
                    pending: status.pending,
                    failed: status.failed,
                }
            },
        )
    }

    /// The outbox entries the server refused (or whose attempts ran out),
    /// in seq order.
    pub fn failed_mutations(&self) -> Result<Vec<PendingMutation>, Error> {
        Ok(self
            .store
            .pending_mutations()?
            .into_iter()
            .filter(|m| matches!(m.state, OutboxState::Failed { .. }))
            .collect())
    }

    /// Queues a failed mutation again (its effect returns to the view).
    /// Returns whether a failed entry with this id existed.
    pub fn retry_mutation(&self, mutation_id: &str) -> Result<bool, Error> {
        let id = parse_mutation_id(mutation_id)?;
        let retried = self.store.retry_failed(&id)?;
        self.notify_local_write();
        Ok(retried)
    }

    /// Deletes an outbox entry, failed or not, and rebuilds its document's
    /// view without it. Returns whether it existed.
    pub fn discard_mutation(&self, mutation_id: &str) -> Result<bool, Error> {
        let id = parse_mutation_id(mutation_id)?;
        self.store.discard(&id)
    }

    /// The newest `limit` resolved conflicts, newest first.
    pub fn conflicts(&self, limit: u32) -> Result<Vec<ConflictRecord>, Error> {
        self.store.conflicts(limit)
    }

    /// Sets (or, with `None`, removes) the handler of conflicts in
    /// `server_wins` and `manual` collections (see
    /// [`crate::sync::conflict`]).
    pub fn set_conflict_handler(&self, handler: Option<Arc<dyn ConflictHandler>>) {
        *self
            .conflicts
            .write()
            .unwrap_or_else(PoisonError::into_inner) = handler;
    }

    /// Creates a shared space owned by this user.
    pub async fn create_space(&self, name: &str) -> Result<SpaceInfo, Error> {
        let credentials = Arc::clone(&self.sync_handle()?.credentials);
        let members = credentials
            .with_access(|api, token| {
                let name = name.to_owned();
                async move { api.create_space(&token, &name).await }
            })
            .await?;
        self.sync_now();
        Ok(space_info(members))
    }

    /// Adds `user` to the shared space `space` (the owner only).
    pub async fn add_member(&self, space: &str, user: &str) -> Result<SpaceInfo, Error> {
        let credentials = Arc::clone(&self.sync_handle()?.credentials);
        let members = credentials
            .with_access(|api, token| {
                let (space, user) = (space.to_owned(), user.to_owned());
                async move { api.add_member(&token, &space, &user).await }
            })
            .await?;
        Ok(space_info(members))
    }

    /// Removes `user` from `space` (the owner removes anyone else; a member
    /// removes themself).
    pub async fn remove_member(&self, space: &str, user: &str) -> Result<SpaceInfo, Error> {
        let credentials = Arc::clone(&self.sync_handle()?.credentials);
        let members = credentials
            .with_access(|api, token| {
                let (space, user) = (space.to_owned(), user.to_owned());
                async move { api.remove_member(&token, &space, &user).await }
            })
            .await?;
        Ok(space_info(members))
    }

    /// The spaces this user belongs to, personal space first.
    pub async fn spaces(&self) -> Result<Vec<SpaceInfo>, Error> {
        let credentials = Arc::clone(&self.sync_handle()?.credentials);
        let list = credentials
            .with_access(|api, token| async move { api.spaces(&token).await })
            .await?;
        Ok(list
            .spaces
            .into_iter()
            .map(|s| SpaceInfo {
                space: s.space.to_string(),
                owner: s.owner.to_string(),
                members: Vec::new(),
            })
            .collect())
    }

    /// Stops syncing and the observers and closes the database. Later calls
    /// fail with [`Error::Closed`]. Idempotent; dropping the client closes
    /// it too.
    pub fn close(&self) {
        if let Some(handle) = lock(&self.sync).take() {
            handle.stop_now();
        }
        self.shared.clear();
        self.observers.stop();
        self.store.close();
    }

    /// Signs this device out: stops syncing, removes its credentials
    /// (from the app's credential store too), closes the client and
    /// deletes its database, with every document and the outbox. Returns
    /// how many writes had not been confirmed by the server (pending or
    /// failed) and are now gone.
    ///
    /// The client is closed afterwards; opening the directory again makes
    /// a new device. The server still lists this device until it is
    /// revoked: call [`Client::revoke_device`] with [`Client::device_id`]
    /// first (while online) so its tokens stop working there too.
    pub fn wipe(&self) -> Result<u64, Error> {
        self.ensure_open()?;
        let (pending, failed) = self.store.outbox_counts()?;
        self.credentials.delete()?;
        let database = self.store.path().to_path_buf();
        self.close();
        for suffix in ["", "-wal", "-shm", "-journal"] {
            let mut name = database.clone().into_os_string();
            name.push(suffix);
            match std::fs::remove_file(&name) {
                Ok(()) => {}
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
                Err(e) => return Err(Error::Io(e)),
            }
        }
        tracing::info!(target: "tandem_core", discarded = pending + failed, "device wiped");
        Ok(pending + failed)
    }

    fn write(&self, doc: &DocRef, write: Write) -> Result<LocalDocument, Error> {
        let local = self.store.write(doc, write)?;
        self.store.touch(doc);
        self.notify_local_write();
        Ok(local)
    }

    fn notify_local_write(&self) {
        if let Some(handle) = lock(&self.sync).as_ref() {
            handle.send(Event::LocalWrite);
        }
    }

    fn resolve(&self, key: &DocKey) -> Result<DocRef, Error> {
        DocRef::resolve(key, &self.store.identity().personal_space)
    }

    fn ensure_open(&self) -> Result<(), Error> {
        if self.store.is_open() {
            Ok(())
        } else {
            Err(Error::Closed)
        }
    }
}

/// How long a coordination request (claim, release, handoff, guard) waits
/// for the server, a connection included.
const REQUEST_TIMEOUT: Duration = Duration::from_secs(15);

/// How long [`Client::handle_push_hint`] syncs.
pub const PUSH_HINT_SYNC_TIMEOUT: Duration = Duration::from_secs(25);

/// Coordination between the user's devices (see [`crate::coordination`]).
/// Everything here needs [`Client::start_sync`].
impl Client {
    async fn role_request(
        &self,
        role: &str,
        message: impl FnOnce(u64) -> ClientMessage,
    ) -> Result<RoleInfo, Error> {
        let handle = self.sync_handle()?;
        let me = self.store.identity().device_id.clone();
        match handle.request(message, REQUEST_TIMEOUT).await? {
            ServerMessage::Role(state) => Ok(RoleInfo::from_state(state, &me)),
            ServerMessage::Error(e) => {
                // A refusal names the role and the epoch this device last
                // heard of.
                let known = RoleFence {
                    role: role.to_owned(),
                    epoch: self.role(role).map_or(0, |r| r.epoch),
                };
                Err(request_error(e, Some(&known)))
            }
            other => Err(Error::Network(format!("unexpected answer {other:?}"))),
        }
    }

    /// Makes this device a candidate for `role` (until
    /// [`Client::release_role`], across reconnects and restarts) and its
    /// holder if the role has no live holder. `priority` orders candidates
    /// when the holder is lost (higher first; then the most recently active
    /// device). Returns the role's state.
    pub async fn claim_role(&self, role: &str, priority: i32) -> Result<RoleInfo, Error> {
        let name = role.to_owned();
        self.role_request(role, move |request_id| {
            ClientMessage::Claim(Claim {
                request_id,
                role: name,
                priority,
            })
        })
        .await
    }

    /// This device is no longer a candidate for `role`; if it held it, the
    /// next eligible device takes it. Returns the role's state.
    pub async fn release_role(&self, role: &str) -> Result<RoleInfo, Error> {
        let name = role.to_owned();
        self.role_request(role, move |request_id| {
            ClientMessage::Release(Release {
                request_id,
                role: name,
            })
        })
        .await
    }

    /// Gives `role`, which this device holds, to the connected device
    /// `to` (a device id). Fails with [`Error::StaleEpoch`] if this device
    /// does not hold it.
    pub async fn handoff_role(&self, role: &str, to: &str) -> Result<RoleInfo, Error> {
        let to = tandem_protocol::DeviceId::new(to)?;
        let name = role.to_owned();
        self.role_request(role, move |request_id| {
            ClientMessage::Handoff(Handoff {
                request_id,
                role: name,
                to,
            })
        })
        .await
    }

    /// The role's state as this device last heard it (`None` before the
    /// first connection, or if the role was never claimed).
    pub fn role(&self, role: &str) -> Option<RoleInfo> {
        self.shared.role(role)
    }

    /// The fence to tag writes and guards made on behalf of `role` with:
    /// `Some` while this device holds it (as last heard).
    pub fn current_fence(&self, role: &str) -> Option<RoleFence> {
        self.shared.role(role).and_then(|r| r.fence())
    }

    /// Calls `observer` with the role's state (now if known, then on each
    /// change of holder or epoch) until the subscription is cancelled or
    /// dropped.
    pub fn observe_role(
        &self,
        role: &str,
        observer: Arc<dyn RoleObserver>,
    ) -> Result<Subscription, Error> {
        self.ensure_open()?;
        let id = self.shared.add_role_observer(role, observer);
        let shared = Arc::downgrade(&self.shared);
        Ok(Subscription::from_cancel(move || {
            if let Some(shared) = shared.upgrade() {
                shared.remove_observer(id);
            }
        }))
    }

    /// Asks the duplicate guard whether `content` (normalized: trimmed,
    /// Unicode NFC, runs of whitespace as one space) was already seen in
    /// `scope` by any device of the user within `window_ms` (default 5 s):
    /// exactly one caller gets [`GuardOutcome::First`].
    pub async fn guard(
        &self,
        scope: &str,
        content: &str,
        window_ms: Option<u64>,
    ) -> Result<GuardOutcome, Error> {
        self.guard_request(scope, content, window_ms, None).await
    }

    /// [`Client::guard`] on behalf of a role: refused with
    /// [`Error::StaleEpoch`] (recording nothing) unless this device holds
    /// the role at the fence's epoch.
    pub async fn guard_fenced(
        &self,
        scope: &str,
        content: &str,
        window_ms: Option<u64>,
        fence: RoleFence,
    ) -> Result<GuardOutcome, Error> {
        self.guard_request(scope, content, window_ms, Some(fence))
            .await
    }

    async fn guard_request(
        &self,
        scope: &str,
        content: &str,
        window_ms: Option<u64>,
        fence: Option<RoleFence>,
    ) -> Result<GuardOutcome, Error> {
        let handle = self.sync_handle()?;
        let (scope, content, asked) = (scope.to_owned(), content.to_owned(), fence.clone());
        let answer = handle
            .request(
                move |request_id| {
                    ClientMessage::Guard(Guard {
                        request_id,
                        scope,
                        content,
                        window_ms,
                        fence: asked,
                    })
                },
                REQUEST_TIMEOUT,
            )
            .await?;
        match answer {
            ServerMessage::GuardResult(result) => Ok(match result.result {
                GuardVerdict::First => GuardOutcome::First,
                GuardVerdict::Duplicate => GuardOutcome::Duplicate,
            }),
            ServerMessage::Error(e) => Err(request_error(e, fence.as_ref())),
            other => Err(Error::Network(format!("unexpected answer {other:?}"))),
        }
    }

    /// [`Client::mutate`] on behalf of a role: the write carries `fence`,
    /// and the server refuses it (`stale_epoch`: the write fails and is
    /// rolled back from the view) unless this device still holds the role
    /// at that epoch when it arrives.
    pub fn mutate_fenced(
        &self,
        key: DocKey,
        operation: &str,
        payload_json: &str,
        fence: RoleFence,
    ) -> Result<LocalDocument, Error> {
        let doc = self.resolve(&key)?;
        let write = match Operation::parse(operation)? {
            Operation::Put => Write::Put(parse_object(payload_json, WriteText::Fields)?),
            Operation::Patch => Write::Patch(parse_object(payload_json, WriteText::Fields)?),
            Operation::Delete => Write::Delete,
            Operation::SetAdd | Operation::SetRemove => {
                return Err(Error::InvalidPayload(
                    "fenced writes are put, patch or delete".into(),
                ));
            }
        };
        let local = self.store.write_fenced(&doc, write, Some(fence))?;
        self.store.touch(&doc);
        self.notify_local_write();
        Ok(local)
    }

    /// [`Client::put`] on behalf of a role (see [`Client::mutate_fenced`]).
    pub fn put_fenced(
        &self,
        key: DocKey,
        fields_json: &str,
        fence: RoleFence,
    ) -> Result<LocalDocument, Error> {
        self.mutate_fenced(key, "put", fields_json, fence)
    }

    /// The user's devices (not revoked ones), by name, from the server.
    pub async fn devices(&self) -> Result<Vec<DeviceInfo>, Error> {
        let credentials = Arc::clone(&self.sync_handle()?.credentials);
        let list = credentials
            .with_access(|api, token| async move { api.devices(&token).await })
            .await?;
        Ok(self.device_infos(list))
    }

    fn device_infos(&self, list: DeviceList) -> Vec<DeviceInfo> {
        let me = &self.store.identity().device_id;
        list.devices
            .into_iter()
            .map(|d| DeviceInfo::from_wire(d, me))
            .collect()
    }

    /// Calls `observer` with the user's devices (now if known, then after
    /// every change the server announces: a device connects, disconnects,
    /// registers, is renamed or revoked) until the subscription is
    /// cancelled or dropped.
    pub fn observe_devices(
        &self,
        observer: Arc<dyn DevicesObserver>,
    ) -> Result<Subscription, Error> {
        self.ensure_open()?;
        let id = self.shared.add_devices_observer(observer);
        let shared = Arc::downgrade(&self.shared);
        Ok(Subscription::from_cancel(move || {
            if let Some(shared) = shared.upgrade() {
                shared.remove_observer(id);
            }
        }))
    }

    /// Renames a device of the user (this one or another). Returns the
    /// devices.
    pub async fn rename_device(
        &self,
        device_id: &str,
        name: &str,
    ) -> Result<Vec<DeviceInfo>, Error> {
        let credentials = Arc::clone(&self.sync_handle()?.credentials);
        let list = credentials
            .with_access(|api, token| {
                let (device, name) = (device_id.to_owned(), name.to_owned());
                async move { api.rename_device(&token, &device, &name).await }
            })
            .await?;
        Ok(self.device_infos(list))
    }

    /// Revokes a device of the user: its connections close at once, its
    /// credentials stop working and it cannot register again (a lost or
    /// stolen phone). Returns the remaining devices.
    pub async fn revoke_device(&self, device_id: &str) -> Result<Vec<DeviceInfo>, Error> {
        let credentials = Arc::clone(&self.sync_handle()?.credentials);
        let list = credentials
            .with_access(|api, token| {
                let device = device_id.to_owned();
                async move { api.revoke_device(&token, &device).await }
            })
            .await?;
        Ok(self.device_infos(list))
    }

    /// Registers this device's push token (`provider`: `apns`, `fcm`, ...):
    /// while it is offline, the server's push webhook gets a hint when
    /// changes land in its spaces.
    pub async fn register_push_token(&self, token: &str, provider: &str) -> Result<(), Error> {
        let credentials = Arc::clone(&self.sync_handle()?.credentials);
        credentials
            .with_access(|api, access| {
                let body = PushToken {
                    token: token.to_owned(),
                    provider: provider.to_owned(),
                };
                async move { api.set_push_token(&access, Some(&body)).await }
            })
            .await
    }

    /// Removes this device's push token: no more hints.
    pub async fn unregister_push_token(&self) -> Result<(), Error> {
        let credentials = Arc::clone(&self.sync_handle()?.credentials);
        credentials
            .with_access(|api, access| async move { api.set_push_token(&access, None).await })
            .await
    }

    /// Handles a push hint the app received (the JSON the server sent its
    /// push webhook, relayed as the notification's payload): checks that it
    /// is meant for this device, then runs a bounded [`Client::sync_once`]
    /// of at most `timeout` (use [`PUSH_HINT_SYNC_TIMEOUT`] in a background
    /// push handler).
    pub async fn handle_push_hint(
        &self,
        payload_json: &str,
        timeout: Duration,
    ) -> Result<SyncOutcome, Error> {
        let hint: PushHint = serde_json::from_str(payload_json)
            .map_err(|e| Error::NotForThisDevice(format!("not a push hint: {e}")))?;
        let identity = self.store.identity();
        if hint.user != identity.user_id || hint.device_id != identity.device_id {
            return Err(Error::NotForThisDevice(format!(
                "the hint is for device {} of {}",
                hint.device_id, hint.user
            )));
        }
        tracing::info!(target: "tandem_core", spaces = hint.spaces.len(), "push hint: syncing");
        self.sync_once(timeout).await
    }
}

/// An `error` answering a request, as the app sees it.
fn request_error(e: tandem_protocol::wire::ErrorMessage, fence: Option<&RoleFence>) -> Error {
    match e.code {
        ErrorCode::StaleEpoch => Error::StaleEpoch {
            role: fence.map(|f| f.role.clone()).unwrap_or_default(),
            epoch: fence.map_or(0, |f| f.epoch),
            reason: e.message,
        },
        code => Error::Server {
            code,
            message: e.message,
        },
    }
}

impl Drop for Client {
    fn drop(&mut self) {
        self.close();
    }
}

impl std::fmt::Debug for Client {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Client")
            .field("device_id", &self.device_id())
            .field("user_id", &self.user_id())
            .finish()
    }
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(PoisonError::into_inner)
}

fn parse_mutation_id(text: &str) -> Result<tandem_protocol::MutationId, Error> {
    text.parse()
        .map_err(|e| Error::InvalidPayload(format!("mutation id {text:?}: {e}")))
}

fn space_info(members: tandem_protocol::api::SpaceMembers) -> SpaceInfo {
    SpaceInfo {
        space: members.space.to_string(),
        owner: members.owner.to_string(),
        members: members.members.into_iter().map(|m| m.to_string()).collect(),
    }
}

fn parse_json(text: &str) -> Result<Value, Error> {
    serde_json::from_str(text).map_err(|e| Error::InvalidJson(e.to_string()))
}

/// A write's JSON object, refused if it holds a number that would be
/// stored rounded (see [`refuse_inexact_numbers`]).
fn parse_object(text: &str, shape: WriteText<'_>) -> Result<Map<String, Value>, Error> {
    let map = parse_any_object(text)?;
    refuse_inexact_numbers(text, shape)?;
    Ok(map)
}

fn parse_any_object(text: &str) -> Result<Map<String, Value>, Error> {
    match parse_json(text)? {
        Value::Object(map) => Ok(map),
        other => Err(Error::NotAnObject {
            found: json_type_name(&other),
        }),
    }
}

/// The values of a set operation on `field`, refused like a write's object.
fn parse_array(text: &str, field: &str) -> Result<Vec<Value>, Error> {
    match parse_json(text)? {
        Value::Array(values) => {
            refuse_inexact_numbers(text, WriteText::SetValues(field))?;
            Ok(values)
        }
        other => Err(Error::NotAnArray {
            found: json_type_name(&other),
        }),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_client_can_be_shared_between_threads() {
        fn shared<T: Send + Sync>() {}
        shared::<Client>();
        shared::<Subscription>();
        shared::<LocalDocument>();
    }

    #[test]
    fn operation_names() {
        assert_eq!(Operation::parse("set_add").unwrap(), Operation::SetAdd);
        assert!(matches!(
            Operation::parse("upsert"),
            Err(Error::UnknownOperation(name)) if name == "upsert"
        ));
    }
}
