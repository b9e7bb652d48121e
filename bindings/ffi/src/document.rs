//! Documents as they cross the boundary: fields as JSON text, metadata
//! typed.
//!
//! Fields stay JSON text because that is what apps decode into their own
//! types (Codable in Swift, kotlinx.serialization or Moshi in Kotlin), and
//! because a typed tree would cost a conversion per value on both sides.

/// Which document a call is about.
#[derive(Debug, Clone, PartialEq, Eq, Hash, uniffi::Record)]
pub struct DocKey {
    /// The collection.
    pub collection: String,
    /// The document id (1 to 128 bytes, no control characters).
    pub id: String,
    /// The space; none means the user's personal space.
    #[uniffi(default = None)]
    pub space: Option<String>,
}

impl From<DocKey> for tandem_core::DocKey {
    fn from(key: DocKey) -> tandem_core::DocKey {
        tandem_core::DocKey {
            space: key.space,
            collection: key.collection,
            id: key.id,
        }
    }
}

/// A document of the local view: the server's confirmed state with this
/// device's pending writes applied on top.
#[derive(Debug, Clone, PartialEq, Eq, uniffi::Record)]
pub struct Document {
    /// The space the document lives in.
    pub space: String,
    /// Its collection.
    pub collection: String,
    /// Its id.
    pub id: String,
    /// Its fields: the text of a JSON object (set fields are arrays; a
    /// deleted document has `{}`).
    pub fields_json: String,
    /// The server revision of its last confirmed change; none until the
    /// server has confirmed it.
    pub version: Option<u64>,
    /// Whether writes made on this device are still waiting for the
    /// server.
    pub pending: bool,
    /// Whether it is deleted (a tombstone kept so the delete syncs).
    pub deleted: bool,
}

impl From<tandem_core::LocalDocument> for Document {
    fn from(doc: tandem_core::LocalDocument) -> Document {
        Document {
            space: doc.space,
            collection: doc.collection,
            id: doc.id,
            fields_json: doc.fields_json,
            version: doc.version,
            pending: doc.pending,
            deleted: doc.deleted,
        }
    }
}

/// Converts a core result list.
pub(crate) fn documents(docs: Vec<tandem_core::LocalDocument>) -> Vec<Document> {
    docs.into_iter().map(Document::from).collect()
}
