//! The `Client`: what an app holds.
//!
//! Shaped for the FFI layer from the start: every method takes `&self`
//! (the client is `Send + Sync` and meant to be shared as `Arc<Client>`),
//! parameters and results are owned plain types, documents come in as JSON
//! text and go out as [`LocalDocument`], observers are trait objects, and
//! there are no lifetimes or generics in the public methods.
//!
//! Today the client is the local half of the engine: store, outbox,
//! queries and observers. The sync engine will live beside the store in
//! this crate and drive the outbox; the methods here keep their shape.

use std::collections::BTreeMap;
use std::sync::Arc;

use serde::Serialize;
use serde_json::{Map, Value};
use tandem_protocol::{Collection, CollectionPolicy};

use crate::config::ClientConfig;
use crate::document::{DocKey, DocRef, LocalDocument};
use crate::error::{Error, json_type_name};
use crate::observe::{DocumentObserver, Observers, QueryObserver, Subscription};
use crate::query::{Query, ResolvedQuery};
use crate::store::{CheckpointSettings, PendingMutation, Store, Write};

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

/// A device's handle on Tandem. Open one per data directory and share it.
pub struct Client {
    store: Arc<Store>,
    observers: Observers,
}

impl Client {
    /// Opens (creating if needed) the device in `config.data_dir`.
    pub fn open(config: ClientConfig) -> Result<Client, Error> {
        let (sink, registry) = Observers::sink();
        let store = Arc::new(Store::open(&config, CheckpointSettings::default(), sink)?);
        let observers = match Observers::start(Arc::clone(&store), registry) {
            Ok(observers) => observers,
            Err(e) => {
                store.close();
                return Err(e);
            }
        };
        Ok(Client { store, observers })
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
        let fields = parse_object(fields_json)?;
        self.store.write(&doc, Write::Put(fields))
    }

    /// Changes the fields named in `fields_json` (a JSON object); a `null`
    /// value removes the field.
    pub fn patch(&self, key: DocKey, fields_json: &str) -> Result<LocalDocument, Error> {
        let doc = self.resolve(&key)?;
        let fields = parse_object(fields_json)?;
        self.store.write(&doc, Write::Patch(fields))
    }

    /// Deletes the document; it remains as a tombstone (`deleted: true`)
    /// so the delete can sync.
    pub fn delete(&self, key: DocKey) -> Result<LocalDocument, Error> {
        let doc = self.resolve(&key)?;
        self.store.write(&doc, Write::Delete)
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
        let values = parse_array(values_json)?;
        self.store.write(
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
        let values = parse_array(values_json)?;
        self.store.write(
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
                let mut payload = parse_object(payload_json)?;
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
                let doc = self.resolve(&key)?;
                let write = if op == Operation::SetAdd {
                    Write::SetAdd { field, values }
                } else {
                    Write::SetRemove { field, values }
                };
                self.store.write(&doc, write)
            }
        }
    }

    /// The local view of a document: `None` if the device has never seen
    /// it; a tombstone (`deleted: true`) if it is deleted.
    pub fn get(&self, key: DocKey) -> Result<Option<LocalDocument>, Error> {
        let doc = self.resolve(&key)?;
        self.store.get(&doc)
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
        let (pending, failed) = self.store.outbox_counts()?;
        let cursors = self
            .store
            .cursors()?
            .into_iter()
            .map(|(space, cursor)| (space, cursor.rev))
            .collect();
        Ok(Status {
            connection: ConnectionState::Offline,
            pending,
            failed,
            last_synced: None,
            cursors,
        })
    }

    /// Stops the observers and closes the database. Later calls fail with
    /// [`Error::Closed`]. Idempotent; dropping the client closes it too.
    pub fn close(&self) {
        self.observers.stop();
        self.store.close();
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

fn parse_json(text: &str) -> Result<Value, Error> {
    serde_json::from_str(text).map_err(|e| Error::InvalidJson(e.to_string()))
}

fn parse_object(text: &str) -> Result<Map<String, Value>, Error> {
    match parse_json(text)? {
        Value::Object(map) => Ok(map),
        other => Err(Error::NotAnObject {
            found: json_type_name(&other),
        }),
    }
}

fn parse_array(text: &str) -> Result<Vec<Value>, Error> {
    match parse_json(text)? {
        Value::Array(values) => Ok(values),
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
