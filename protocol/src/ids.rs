//! Validated identifiers.
//!
//! Every identifier that crosses the wire is validated when it is decoded, so
//! code holding a `DocId` or a `SpaceId` never has to check it again.

use std::fmt;
use std::str::FromStr;

use serde::{Deserialize, Serialize};
use uuid::Uuid;

/// The longest document id, in bytes.
pub const MAX_DOC_ID_BYTES: usize = 128;
/// The longest collection name, in bytes.
pub const MAX_COLLECTION_BYTES: usize = 64;
/// The longest space, user or device id, in bytes.
pub const MAX_NAME_BYTES: usize = 200;

/// Why an identifier was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum IdError {
    /// The identifier is the empty string.
    #[error("{kind} must not be empty")]
    Empty {
        /// Which kind of identifier.
        kind: &'static str,
    },
    /// The identifier is longer than its limit.
    #[error("{kind} is {len} bytes, longer than the limit of {max}")]
    TooLong {
        /// Which kind of identifier.
        kind: &'static str,
        /// Its length in bytes.
        len: usize,
        /// The limit in bytes.
        max: usize,
    },
    /// The identifier contains a character it may not.
    #[error("{kind} contains the character {ch:?}, which is not allowed")]
    BadCharacter {
        /// Which kind of identifier.
        kind: &'static str,
        /// The offending character.
        ch: char,
    },
    /// A mutation id that is not a UUID.
    #[error("not a UUID: {0}")]
    NotUuid(String),
}

fn check_text(kind: &'static str, s: &str, max: usize) -> Result<(), IdError> {
    if s.is_empty() {
        return Err(IdError::Empty { kind });
    }
    if s.len() > max {
        return Err(IdError::TooLong {
            kind,
            len: s.len(),
            max,
        });
    }
    if let Some(ch) = s.chars().find(|c| c.is_control()) {
        return Err(IdError::BadCharacter { kind, ch });
    }
    Ok(())
}

fn check_name(kind: &'static str, s: &str, max: usize) -> Result<(), IdError> {
    check_text(kind, s, max)?;
    if let Some(ch) = s
        .chars()
        .find(|c| !(c.is_ascii_alphanumeric() || matches!(c, '_' | '-' | '.')))
    {
        return Err(IdError::BadCharacter { kind, ch });
    }
    Ok(())
}

macro_rules! string_id {
    ($(#[$doc:meta])* $name:ident, $kind:literal, $check:expr) => {
        $(#[$doc])*
        #[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
        #[serde(try_from = "String", into = "String")]
        pub struct $name(String);

        impl $name {
            /// Validates and wraps `value`.
            pub fn new(value: impl Into<String>) -> Result<Self, IdError> {
                let value = value.into();
                let check: fn(&str) -> Result<(), IdError> = $check;
                check(&value)?;
                Ok(Self(value))
            }

            /// The identifier as text.
            pub fn as_str(&self) -> &str {
                &self.0
            }
        }

        impl TryFrom<String> for $name {
            type Error = IdError;
            fn try_from(value: String) -> Result<Self, IdError> {
                Self::new(value)
            }
        }

        impl From<$name> for String {
            fn from(id: $name) -> String {
                id.0
            }
        }

        impl FromStr for $name {
            type Err = IdError;
            fn from_str(s: &str) -> Result<Self, IdError> {
                Self::new(s)
            }
        }

        impl fmt::Display for $name {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str(&self.0)
            }
        }

        impl AsRef<str> for $name {
            fn as_ref(&self) -> &str {
                &self.0
            }
        }
    };
}

string_id!(
    /// A document id: any text of 1 to 128 bytes without control characters.
    /// Client-generated; [`DocId::generate`] gives a UUIDv7 so inserts stay
    /// ordered by creation time.
    DocId,
    "document id",
    |s| check_text("document id", s, MAX_DOC_ID_BYTES)
);

string_id!(
    /// A collection name: 1 to 64 bytes of ASCII letters, digits, `_`, `-`, `.`.
    Collection,
    "collection",
    |s| check_name("collection", s, MAX_COLLECTION_BYTES)
);

string_id!(
    /// A space id. A user's personal space is `personal:<user>`
    /// ([`SpaceId::personal`]); a shared space's id is its name, 1 to 64 bytes
    /// of ASCII letters, digits, `_`, `-`, `.` ([`SpaceId::shared`]).
    SpaceId,
    "space id",
    |s| check_text("space id", s, MAX_NAME_BYTES)
);

string_id!(
    /// A user id, as the user token's subject names it.
    UserId,
    "user id",
    |s| check_text("user id", s, MAX_NAME_BYTES)
);

string_id!(
    /// A device id: chosen once per installation (a UUIDv7 by default,
    /// [`DeviceId::generate`]) and kept for the life of the installation. It
    /// also breaks ties between equal clock readings.
    DeviceId,
    "device id",
    |s| check_name("device id", s, MAX_NAME_BYTES)
);

/// The prefix of personal space ids.
pub const PERSONAL_SPACE_PREFIX: &str = "personal:";

impl SpaceId {
    /// The personal space of `user`.
    pub fn personal(user: &UserId) -> SpaceId {
        SpaceId(format!("{PERSONAL_SPACE_PREFIX}{}", user.as_str()))
    }

    /// A shared space named `name`; the name must be a plain name (see the
    /// type's documentation) so that it can never collide with a personal
    /// space.
    pub fn shared(name: &str) -> Result<SpaceId, IdError> {
        check_name("space name", name, 64)?;
        Ok(SpaceId(name.to_owned()))
    }

    /// The owner of this space if it is a personal space.
    pub fn personal_owner(&self) -> Option<&str> {
        self.0.strip_prefix(PERSONAL_SPACE_PREFIX)
    }
}

impl DocId {
    /// A new time-ordered (UUIDv7) document id.
    pub fn generate() -> DocId {
        DocId(Uuid::now_v7().to_string())
    }
}

impl DeviceId {
    /// A new random (UUIDv7) device id.
    pub fn generate() -> DeviceId {
        DeviceId(Uuid::now_v7().to_string())
    }
}

/// A mutation's id: a UUIDv7 chosen by the client when the write is made.
/// It is the idempotency key: the server applies a mutation id at most once
/// and answers every retry with the original result.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(try_from = "String", into = "String")]
pub struct MutationId(Uuid);

impl MutationId {
    /// A new time-ordered mutation id.
    pub fn generate() -> MutationId {
        MutationId(Uuid::now_v7())
    }

    /// Wraps an existing UUID.
    pub fn from_uuid(uuid: Uuid) -> MutationId {
        MutationId(uuid)
    }

    /// The UUID inside.
    pub fn as_uuid(&self) -> &Uuid {
        &self.0
    }
}

impl TryFrom<String> for MutationId {
    type Error = IdError;
    fn try_from(value: String) -> Result<Self, IdError> {
        value.parse()
    }
}

impl From<MutationId> for String {
    fn from(id: MutationId) -> String {
        id.0.to_string()
    }
}

impl FromStr for MutationId {
    type Err = IdError;
    fn from_str(s: &str) -> Result<Self, IdError> {
        Uuid::parse_str(s)
            .map(MutationId)
            .map_err(|_| IdError::NotUuid(s.chars().take(64).collect()))
    }
}

impl fmt::Display for MutationId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        self.0.fmt(f)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn doc_ids_are_bounded() {
        assert!(DocId::new("a").is_ok());
        assert!(DocId::new("ünïcode ok").is_ok());
        assert!(matches!(DocId::new(""), Err(IdError::Empty { .. })));
        assert!(matches!(
            DocId::new("x".repeat(129)),
            Err(IdError::TooLong { len: 129, .. })
        ));
        assert!(DocId::new("x".repeat(128)).is_ok());
        assert!(matches!(
            DocId::new("a\nb"),
            Err(IdError::BadCharacter { .. })
        ));
    }

    #[test]
    fn names_are_plain() {
        assert!(Collection::new("messages").is_ok());
        assert!(Collection::new("my.things-2_x").is_ok());
        assert!(Collection::new("with space").is_err());
        assert!(Collection::new("a:b").is_err());
        assert!(SpaceId::shared("team").is_ok());
        assert!(SpaceId::shared("personal:bob").is_err());
    }

    #[test]
    fn personal_spaces_name_their_owner() {
        let user = UserId::new("alice").unwrap();
        let space = SpaceId::personal(&user);
        assert_eq!(space.as_str(), "personal:alice");
        assert_eq!(space.personal_owner(), Some("alice"));
        assert_eq!(SpaceId::shared("team").unwrap().personal_owner(), None);
    }

    #[test]
    fn ids_are_validated_when_decoded() {
        let err = serde_json::from_str::<DocId>("\"\"").unwrap_err();
        assert!(err.to_string().contains("must not be empty"), "{err}");
        assert!(serde_json::from_str::<MutationId>("\"nope\"").is_err());
        let id = MutationId::generate();
        let back: MutationId = serde_json::from_str(&serde_json::to_string(&id).unwrap()).unwrap();
        assert_eq!(id, back);
    }

    #[test]
    fn generated_ids_are_time_ordered() {
        let a = MutationId::generate();
        let b = MutationId::generate();
        assert!(a < b);
        assert_eq!(a.as_uuid().get_version_num(), 7);
    }
}
