//! The errors of the client engine.
//!
//! Every variant names one thing that went wrong and what it concerns, so the
//! FFI layer can map it to the few cases an app acts on (invalid input,
//! storage, closed) and the CLI can print a stable code ([`Error::code`]).
//! Bad input is always detected before anything is written.

use tandem_protocol::ids::IdError;
use tandem_protocol::{ErrorCode, RejectCode, Rejection};

/// What went wrong in a [`Client`](crate::Client) call.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// The text given as a document (or as set values) is not valid JSON.
    #[error("invalid JSON: {0}")]
    InvalidJson(String),

    /// The JSON is valid but is not an object, and a document's fields (or a
    /// patch) must be one.
    #[error("expected a JSON object, got {found}")]
    NotAnObject {
        /// What it got: `null`, `boolean`, `number`, `string` or `array`.
        found: &'static str,
    },

    /// The JSON is valid but is not an array, and the values of a set
    /// operation must be one.
    #[error("expected a JSON array of values, got {found}")]
    NotAnArray {
        /// What it got: `null`, `boolean`, `number`, `string` or `object`.
        found: &'static str,
    },

    /// The document's merge state would be larger than the configured limit
    /// ([`ClientConfig::max_document_bytes`](crate::ClientConfig)). The size
    /// is that of the document's state as JSON
    /// ([`DocState::encoded_len`](tandem_protocol::DocState::encoded_len)),
    /// which is also what the server limits.
    #[error("the document would be {size} bytes, over the limit of {limit} bytes")]
    DocumentTooLarge {
        /// The size the document would have.
        size: usize,
        /// The limit.
        limit: usize,
    },

    /// An identifier is empty, too long or has a character it may not
    /// (document ids: 1 to 128 bytes, no control characters; collections:
    /// 1 to 64 bytes of ASCII letters, digits, `_`, `-`, `.`).
    #[error(transparent)]
    InvalidId(#[from] IdError),

    /// A query filters or orders on a field that no declared index of the
    /// collection covers ([`Client::declare_index`](crate::Client::declare_index)).
    #[error("{field} is not an indexed field of {collection}: declare an index on it first")]
    NotIndexed {
        /// The collection queried.
        collection: String,
        /// The field that is not indexed.
        field: String,
    },

    /// An index declaration is not acceptable (no fields, too many, a field
    /// name that is not a plain name, a repeated field).
    #[error("invalid index: {0}")]
    InvalidIndex(String),

    /// A query's `after` names a document that is not in the collection, so
    /// there is no position to continue from.
    #[error("no document {id} in {collection} to continue the query after")]
    CursorNotFound {
        /// The collection queried.
        collection: String,
        /// The document id given as the cursor.
        id: String,
    },

    /// An operation name that is not one of `put`, `patch`, `delete`,
    /// `set_add`, `set_remove`.
    #[error("unknown operation {0:?}: expected put, patch, delete, set_add or set_remove")]
    UnknownOperation(String),

    /// The payload of an operation named as text
    /// ([`Client::mutate`](crate::Client::mutate)) lacks a part the
    /// operation needs, or has it in the wrong type.
    #[error("invalid payload: {0}")]
    InvalidPayload(String),

    /// The collection's merge policy does not allow the write (for example a
    /// set operation on a field that is not declared as a set, or an update
    /// of an `append_only` document).
    #[error("{reason}")]
    Rejected {
        /// The protocol's code for the rejection.
        code: RejectCode,
        /// A sentence for people.
        reason: String,
        /// The field at fault, if one is.
        field: Option<String>,
    },

    /// The data directory was created for another user; a device's database
    /// belongs to one user for its whole life.
    #[error("this data directory belongs to user {stored}, not {requested}")]
    UserMismatch {
        /// The user the directory belongs to.
        stored: String,
        /// The user that was asked for.
        requested: String,
    },

    /// The database was written by a newer version of Tandem.
    #[error("the database has schema version {found}; this build knows up to {supported}")]
    IncompatibleDatabase {
        /// The database's schema version.
        found: i64,
        /// The newest version this build knows.
        supported: i64,
    },

    /// Something the store wrote earlier cannot be read back (a damaged or
    /// hand-edited database).
    #[error("stored data is damaged: {0}")]
    CorruptStore(String),

    /// SQLite failed.
    #[error("storage: {0}")]
    Storage(#[from] rusqlite::Error),

    /// The data directory could not be created or read.
    #[error("data directory: {0}")]
    Io(#[from] std::io::Error),

    /// The client was closed.
    #[error("the client is closed")]
    Closed,

    /// The call needs the server, and syncing was not started
    /// ([`Client::start_sync`](crate::Client::start_sync)).
    #[error("syncing is not started: start it with a server URL first")]
    NotSyncing,

    /// The server could not be reached, or answered with something that is
    /// not the protocol.
    #[error("network: {0}")]
    Network(String),

    /// The TLS connection to the server could not be made: its certificate
    /// is not trusted (unknown authority, wrong host name, expired, no
    /// pinned key) or it does not speak TLS. Syncing retries with backoff;
    /// the message says what to fix.
    #[error("tls: {0}")]
    Tls(String),

    /// The database could not be opened with the key given: another key
    /// encrypted it, it is encrypted and no key was given, or it is plain
    /// and a key was given. Nothing was changed.
    #[error("wrong_key: {0}")]
    WrongKey(String),

    /// The app's [`CredentialStore`](crate::CredentialStore) failed (the
    /// Keychain is locked, the Keystore key is gone) or holds something
    /// this device did not save.
    #[error("credential_store: {0}")]
    CredentialStore(String),

    /// A setting given to the client cannot work: a server URL that is not
    /// `http(s)://` or `ws(s)://`, a trusted root that is not a PEM
    /// certificate, a malformed pin. Nothing was started.
    #[error("invalid_config: {0}")]
    InvalidConfig(String),

    /// The server refused the request; `code` is the protocol's error code
    /// (`unauthorized`, `forbidden`, `not_found`, `already_exists`, ...).
    #[error("server: {}: {message}", code.as_str())]
    Server {
        /// The protocol's error code.
        code: ErrorCode,
        /// For people.
        message: String,
    },

    /// The document was evicted from this device to keep the database
    /// within its budget, and the server cannot be asked for it now.
    #[error("{collection}/{id} is not on this device (evicted); it is fetched again when online")]
    NotLocal {
        /// The document's collection.
        collection: String,
        /// The document's id.
        id: String,
    },

    /// A user token could not be had from the app's token provider.
    #[error(transparent)]
    Token(#[from] crate::sync::TokenError),

    /// A bounded call did not finish in time.
    #[error("timed out")]
    Timeout,

    /// The server refused this device's credentials (the user token was
    /// refused, or the device was revoked): sign the user in again.
    #[error("unauthorized: {0}")]
    Unauthorized(String),

    /// This device does not hold the role (any more) at the epoch it acted
    /// under: another device took it. Nothing was done.
    #[error("role {role} is not held by this device at epoch {epoch}: {reason}")]
    StaleEpoch {
        /// The role.
        role: String,
        /// The epoch the call was made under (0 if this device never held
        /// it).
        epoch: u64,
        /// Why, for people.
        reason: String,
    },

    /// A push hint was not meant for this device (another user or device),
    /// or is not a hint.
    #[error("not a push hint for this device: {0}")]
    NotForThisDevice(String),
}

impl Error {
    /// A stable, machine-readable code for the error, as the CLI prints it.
    pub fn code(&self) -> &'static str {
        match self {
            Error::InvalidJson(_) => "invalid_json",
            Error::NotAnObject { .. } => "not_an_object",
            Error::NotAnArray { .. } => "not_an_array",
            Error::DocumentTooLarge { .. } => "document_too_large",
            Error::InvalidId(_) => "invalid_id",
            Error::NotIndexed { .. } => "not_indexed",
            Error::InvalidIndex(_) => "invalid_index",
            Error::CursorNotFound { .. } => "cursor_not_found",
            Error::UnknownOperation(_) => "unknown_operation",
            Error::InvalidPayload(_) => "invalid_payload",
            Error::Rejected { code, .. } => code.as_str(),
            Error::UserMismatch { .. } => "user_mismatch",
            Error::IncompatibleDatabase { .. } => "incompatible_database",
            Error::CorruptStore(_) => "corrupt_store",
            Error::Storage(_) => "storage",
            Error::Io(_) => "io",
            Error::Closed => "closed",
            Error::NotSyncing => "not_syncing",
            Error::Network(_) => "network",
            Error::Tls(_) => "tls",
            Error::InvalidConfig(_) => "invalid_config",
            Error::CredentialStore(_) => "credential_store",
            Error::WrongKey(_) => "wrong_key",
            Error::Server { code, .. } => code.as_str(),
            Error::NotLocal { .. } => "not_local",
            Error::Token(_) => "token",
            Error::Timeout => "timeout",
            Error::Unauthorized(_) => "unauthorized",
            Error::StaleEpoch { .. } => "stale_epoch",
            Error::NotForThisDevice(_) => "not_for_this_device",
        }
    }

    /// The message without the code in front: for callers that print the
    /// code themselves (`error: <code>: <reason>`), so it is not said
    /// twice.
    pub fn reason(&self) -> String {
        if let Error::Server { message, .. } = self {
            return message.clone();
        }
        let message = self.to_string();
        let code = self.code();
        match message
            .strip_prefix(code)
            .and_then(|m| m.strip_prefix(": "))
        {
            Some(rest) => rest.to_owned(),
            None => message,
        }
    }

    /// Whether the error is the caller's input, as opposed to the state of
    /// the device (storage, closed).
    pub fn is_invalid_input(&self) -> bool {
        !matches!(
            self,
            Error::Storage(_)
                | Error::Io(_)
                | Error::Closed
                | Error::CorruptStore(_)
                | Error::IncompatibleDatabase { .. }
                | Error::UserMismatch { .. }
                | Error::NotSyncing
                | Error::Network(_)
                | Error::Tls(_)
                | Error::CredentialStore(_)
                | Error::Server { .. }
                | Error::NotLocal { .. }
                | Error::Token(_)
                | Error::Timeout
                | Error::Unauthorized(_)
                | Error::StaleEpoch { .. }
        )
    }
}

impl From<Rejection> for Error {
    fn from(r: Rejection) -> Error {
        Error::Rejected {
            code: r.code,
            reason: r.reason,
            field: r.field,
        }
    }
}

/// The name of a JSON value's type, for error messages.
pub(crate) fn json_type_name(v: &serde_json::Value) -> &'static str {
    match v {
        serde_json::Value::Null => "null",
        serde_json::Value::Bool(_) => "boolean",
        serde_json::Value::Number(_) => "number",
        serde_json::Value::String(_) => "string",
        serde_json::Value::Array(_) => "array",
        serde_json::Value::Object(_) => "object",
    }
}
