//! The `Client`: what an app holds.
//!
//! Shaped for the FFI layer from the start: every method takes `&self`
//! (the client is `Send + Sync` and meant to be shared as `Arc<Client>`),
//! parameters and results are owned plain types, documents come in as JSON
//! text and go out as [`LocalDocument`], observers are trait objects, and
//! there are no lifetimes or generics in the public methods.
//!
//! The methods live by feature:
//!
//! - here: opening and closing, and the local data (writes, reads,
//!   queries, observers, indexes, policies, the outbox);
//! - `status.rs`: the sync status, failed writes and the conflict log;
//! - `sync.rs` (native driver): starting, stopping and nudging sync;
//! - `account.rs` (native driver): the server's HTTP calls (spaces,
//!   members, devices, push tokens, fetching an evicted document);
//! - `coordination.rs`: roles, the duplicate guard and fenced writes.
//!
//! Local use needs only [`Client::open`]. Syncing starts with
//! `Client::start_sync`, which runs the sync engine (`crate::sync`) on
//! the caller's tokio runtime until `Client::stop_sync` or
//! [`Client::close`]. The async methods are plain `async fn`s: the FFI
//! layer owns a runtime and awaits them there.

use std::sync::{Arc, Mutex, PoisonError, RwLock};

use serde_json::{Map, Value};
use tandem_protocol::{Collection, CollectionPolicy};

use crate::config::{ClientConfig, DatabaseKey};
use crate::credentials::CredentialVault;
use crate::document::{DocKey, DocRef, LocalDocument, WriteText, refuse_inexact_numbers};
use crate::error::{Error, json_type_name};
use crate::observe::{DocumentObserver, Observers, QueryObserver, Subscription};
use crate::query::{Query, ResolvedQuery};
use crate::store::{CheckpointSettings, PendingMutation, Store, Write};
use crate::sync::conflict::ConflictSlot;
#[cfg(feature = "native")]
use crate::sync::driver::SyncHandle;
#[cfg(feature = "native")]
use crate::sync::interface::Event;
use crate::sync::live::LiveHub;

#[cfg(feature = "native")]
mod account;
mod coordination;
mod status;
#[cfg(feature = "native")]
mod sync;

#[cfg(feature = "native")]
pub use account::{PUSH_HINT_SYNC_TIMEOUT, SpaceInfo};
#[cfg(feature = "native")]
pub use sync::SyncOutcome;

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

/// A device's handle on Tandem. Open one per data directory and share it.
pub struct Client {
    store: Arc<Store>,
    credentials: CredentialVault,
    observers: Observers,
    device_name: String,
    #[cfg(feature = "native")]
    sync: Mutex<Option<Arc<SyncHandle>>>,
    live: Arc<LiveHub>,
    conflicts: ConflictSlot,
    network_available: std::sync::atomic::AtomicBool,
}

impl Client {
    /// Opens (creating if needed) the device in `config.data_dir`.
    pub fn open(config: ClientConfig) -> Result<Client, Error> {
        let (sink, registry) = Observers::sink();
        let store = Arc::new(Store::open(
            &config,
            CheckpointSettings::default(),
            Box::new(sink),
        )?);
        let credentials = CredentialVault::new(Arc::clone(&store), config.credential_store.clone());
        let observers = match credentials.adopt_database_credentials().and_then(|()| {
            Observers::start(Arc::clone(&store), registry, config.background.as_ref())
        }) {
            Ok(observers) => observers,
            Err(e) => {
                store.close();
                return Err(e);
            }
        };
        let live = Arc::new(LiveHub::new(observers.notices()));
        Ok(Client {
            store,
            credentials,
            observers,
            device_name: config.device_name,
            #[cfg(feature = "native")]
            sync: Mutex::new(None),
            live,
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

    /// Stops syncing and the observers and closes the database. Later calls
    /// fail with [`Error::Closed`]. Idempotent; dropping the client closes
    /// it too.
    pub fn close(&self) {
        #[cfg(feature = "native")]
        if let Some(handle) = lock(&self.sync).take() {
            handle.stop_now();
        }
        self.live.clear();
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

    pub(crate) fn write(&self, doc: &DocRef, write: Write) -> Result<LocalDocument, Error> {
        let local = self.store.write(doc, write)?;
        self.store.touch(doc);
        self.notify_local_write();
        Ok(local)
    }

    /// Tells the sync engine (if running) that there may be something to
    /// send.
    pub(crate) fn notify_local_write(&self) {
        #[cfg(feature = "native")]
        if let Some(handle) = lock(&self.sync).as_ref() {
            handle.send(Event::LocalWrite);
        }
    }

    pub(crate) fn resolve(&self, key: &DocKey) -> Result<DocRef, Error> {
        DocRef::resolve(key, &self.store.identity().personal_space)
    }

    pub(crate) fn ensure_open(&self) -> Result<(), Error> {
        if self.store.is_open() {
            Ok(())
        } else {
            Err(Error::Closed)
        }
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

pub(crate) fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(PoisonError::into_inner)
}

pub(crate) fn parse_mutation_id(text: &str) -> Result<tandem_protocol::MutationId, Error> {
    text.parse()
        .map_err(|e| Error::InvalidPayload(format!("mutation id {text:?}: {e}")))
}

fn parse_json(text: &str) -> Result<Value, Error> {
    serde_json::from_str(text).map_err(|e| Error::InvalidJson(e.to_string()))
}

/// A write's JSON object, refused if it holds a number that would be
/// stored rounded (see [`refuse_inexact_numbers`]).
pub(crate) fn parse_object(text: &str, shape: WriteText<'_>) -> Result<Map<String, Value>, Error> {
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
