//! Documents as the app sees them.

use serde::ser::{Serialize, SerializeStruct, Serializer};
use serde_json::value::RawValue;
use serde_json::{Map, Value};
use tandem_protocol::numbers::{PathStep, first_inexact_number};
use tandem_protocol::{Collection, DocId, RejectCode, SpaceId};

use crate::error::Error;

/// What the JSON text of a write holds, to name the field of a number in it.
#[derive(Debug, Clone, Copy)]
pub(crate) enum WriteText<'a> {
    /// A fields object (`put`, `patch`): the top-level key is the field.
    Fields,
    /// The values of a set operation on `field`.
    SetValues(&'a str),
    /// `{"field": name, "values": [...]}`: a set operation on `name`
    /// named as text.
    SetPayload(&'a str),
}

/// Refuses, before anything is written, a write whose JSON `text` holds an
/// integer no 64-bit parser keeps as written (see
/// [`tandem_protocol::numbers`]): its parsed value would hold a rounded
/// number. The error is the server's refusal of the same write,
/// `invalid_mutation` naming the field.
pub(crate) fn refuse_inexact_numbers(text: &str, shape: WriteText<'_>) -> Result<(), Error> {
    let Some(number) = first_inexact_number(text) else {
        return Ok(());
    };
    let (field, place) = match shape {
        WriteText::Fields => {
            let field = match number.path.first() {
                Some(PathStep::Key(field)) => Some(field.clone()),
                _ => None,
            };
            (field, number.path_text(0))
        }
        WriteText::SetValues(field) => (
            Some(field.to_owned()),
            format!("{field}{}", number.path_text(0)),
        ),
        WriteText::SetPayload(field) => (
            Some(field.to_owned()),
            format!("{field}{}", number.path_text(1)),
        ),
    };
    Err(Error::Rejected {
        code: RejectCode::InvalidMutation,
        reason: format!("{place}: {}", number.explain()),
        field,
    })
}

/// Which document a call is about, as the app names it.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct DocKey {
    /// The space; `None` is the user's personal space.
    pub space: Option<String>,
    /// The collection.
    pub collection: String,
    /// The document id.
    pub id: String,
}

impl DocKey {
    /// A document of the user's personal space.
    pub fn personal(collection: &str, id: &str) -> DocKey {
        DocKey {
            space: None,
            collection: collection.to_owned(),
            id: id.to_owned(),
        }
    }

    /// A document of the space `space`.
    pub fn in_space(space: &str, collection: &str, id: &str) -> DocKey {
        DocKey {
            space: Some(space.to_owned()),
            collection: collection.to_owned(),
            id: id.to_owned(),
        }
    }
}

/// A validated document address: where a document lives in the store.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct DocRef {
    /// The space.
    pub space: SpaceId,
    /// The collection.
    pub collection: Collection,
    /// The document id.
    pub id: DocId,
}

impl DocRef {
    /// Validates `key`, resolving a missing space to `personal_space`.
    pub fn resolve(key: &DocKey, personal_space: &SpaceId) -> Result<DocRef, Error> {
        let space = match &key.space {
            Some(space) => SpaceId::new(space.as_str())?,
            None => personal_space.clone(),
        };
        Ok(DocRef {
            space,
            collection: Collection::new(key.collection.as_str())?,
            id: DocId::new(key.id.as_str())?,
        })
    }
}

/// A document of the local view: the server's confirmed state with this
/// device's pending writes applied on top.
///
/// It serializes to the document shape of the CLI contract:
/// `{"space":…,"collection":…,"id":…,"fields":{…},"version":n|null,"pending":bool,"deleted":bool}`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LocalDocument {
    /// The space the document lives in.
    pub space: String,
    /// Its collection.
    pub collection: String,
    /// Its id.
    pub id: String,
    /// Its fields as the text of a JSON object (set fields are arrays). Kept
    /// as text because that is what apps decode into their own types
    /// (Codable, kotlinx.serialization), and parsing it here for every
    /// document of a large query result would cost as much as the query;
    /// [`LocalDocument::fields`] parses it.
    pub fields_json: String,
    /// The server revision of the last confirmed change to it, or `None` if
    /// the server has not confirmed it yet.
    pub version: Option<u64>,
    /// Whether writes made on this device are waiting in the outbox (queued,
    /// in flight, retrying or failed), so the server has not confirmed this
    /// view yet.
    pub pending: bool,
    /// Whether the document is deleted (a tombstone; `fields` is empty).
    pub deleted: bool,
}

impl LocalDocument {
    /// The fields, parsed.
    pub fn fields(&self) -> Result<Map<String, Value>, Error> {
        serde_json::from_str(&self.fields_json)
            .map_err(|e| Error::CorruptStore(format!("fields of {}: {e}", self.id)))
    }
}

impl Serialize for LocalDocument {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        // The fields text is written as it is: it is a JSON object the store
        // produced itself, so it only needs checking, not rebuilding.
        let fields: &RawValue =
            serde_json::from_str(&self.fields_json).map_err(serde::ser::Error::custom)?;
        let mut s = serializer.serialize_struct("LocalDocument", 7)?;
        s.serialize_field("space", &self.space)?;
        s.serialize_field("collection", &self.collection)?;
        s.serialize_field("id", &self.id)?;
        s.serialize_field("fields", fields)?;
        s.serialize_field("version", &self.version)?;
        s.serialize_field("pending", &self.pending)?;
        s.serialize_field("deleted", &self.deleted)?;
        s.end()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn serializes_to_the_cli_document_shape() {
        let doc = LocalDocument {
            space: "personal:alice".into(),
            collection: "tasks".into(),
            id: "t1".into(),
            fields_json: r#"{"done":false,"title":"milk"}"#.into(),
            version: None,
            pending: true,
            deleted: false,
        };
        assert_eq!(
            serde_json::to_string(&doc).unwrap(),
            r#"{"space":"personal:alice","collection":"tasks","id":"t1","fields":{"done":false,"title":"milk"},"version":null,"pending":true,"deleted":false}"#
        );
    }

    #[test]
    fn keys_resolve_to_the_personal_space_by_default() {
        let personal = SpaceId::new("personal:alice").unwrap();
        let r = DocRef::resolve(&DocKey::personal("tasks", "t1"), &personal).unwrap();
        assert_eq!(r.space, personal);
        let r = DocRef::resolve(&DocKey::in_space("team", "tasks", "t1"), &personal).unwrap();
        assert_eq!(r.space.as_str(), "team");
        assert!(matches!(
            DocRef::resolve(&DocKey::personal("tasks", ""), &personal),
            Err(Error::InvalidId(_))
        ));
    }
}
