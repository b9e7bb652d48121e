//! The schema file (`collection_rules`: not the database's schema, which
//! is `store/*/migrations.rs`): per-collection merge policies, set fields
//! and field rules.
//!
//! `tandem serve --schema FILE` reads a JSON file:
//!
//! ```json
//! {
//!   "collections": {
//!     "messages": {
//!       "policy": "append_only",
//!       "set_fields": ["read_by"],
//!       "fields": {
//!         "text": {"type": "string", "required": true, "max_length": 4000},
//!         "priority": {"type": "integer", "min": 0, "max": 5}
//!       }
//!     }
//!   }
//! }
//! ```
//!
//! Collections the file does not name are `lww` with no rules. Field rules are
//! checked against the document as it would be after a mutation (its visible
//! fields; tombstones are not checked), so a rule holds for every committed
//! live document whatever order writes arrive in.

use std::collections::BTreeMap;
use std::path::Path;

use serde::{Deserialize, Serialize};
use serde_json::Value;
use tandem_protocol::merge::Rejection;
use tandem_protocol::{Collection, CollectionPolicy, DocState, Policy, RejectCode};

/// Why a schema file was refused.
#[derive(Debug, thiserror::Error)]
pub enum SchemaError {
    /// The file could not be read.
    #[error("cannot read {path}: {source}")]
    Read {
        /// The file.
        path: String,
        /// The cause.
        source: std::io::Error,
    },
    /// The file is not a valid schema.
    #[error("invalid schema: {0}")]
    Invalid(String),
}

/// The schema: every declared collection.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Schema {
    /// Declared collections by name.
    #[serde(default)]
    pub collections: BTreeMap<Collection, CollectionSchema>,
}

/// One collection's declaration.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CollectionSchema {
    /// The merge policy (`lww` if absent).
    #[serde(default)]
    pub policy: Policy,
    /// Fields that are observed-remove sets.
    #[serde(default)]
    pub set_fields: Vec<String>,
    /// Rules per field.
    #[serde(default)]
    pub fields: BTreeMap<String, FieldRule>,
}

/// The rules one field must satisfy.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct FieldRule {
    /// The field must be present (and not `null`) in every live document.
    #[serde(default)]
    pub required: bool,
    /// The JSON type of the value.
    #[serde(default, rename = "type", skip_serializing_if = "Option::is_none")]
    pub kind: Option<FieldType>,
    /// Fewest characters (strings) or elements (arrays).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub min_length: Option<u64>,
    /// Most characters (strings) or elements (arrays).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_length: Option<u64>,
    /// Smallest number.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub min: Option<f64>,
    /// Largest number.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max: Option<f64>,
}

/// JSON value types a field rule can require.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum FieldType {
    /// A string.
    String,
    /// Any number.
    Number,
    /// A number without a fractional part.
    Integer,
    /// `true` or `false`.
    Boolean,
    /// A JSON object.
    Object,
    /// A JSON array.
    Array,
}

impl FieldType {
    fn name(self) -> &'static str {
        match self {
            FieldType::String => "a string",
            FieldType::Number => "a number",
            FieldType::Integer => "an integer",
            FieldType::Boolean => "a boolean",
            FieldType::Object => "an object",
            FieldType::Array => "an array",
        }
    }

    fn matches(self, value: &Value) -> bool {
        match self {
            FieldType::String => value.is_string(),
            FieldType::Number => value.is_number(),
            FieldType::Integer => value.is_i64() || value.is_u64(),
            FieldType::Boolean => value.is_boolean(),
            FieldType::Object => value.is_object(),
            FieldType::Array => value.is_array(),
        }
    }
}

impl Schema {
    /// Reads and checks a schema file.
    pub fn load(path: &Path) -> Result<Schema, SchemaError> {
        let text = std::fs::read_to_string(path).map_err(|source| SchemaError::Read {
            path: path.display().to_string(),
            source,
        })?;
        Schema::parse(&text)
    }

    /// Parses and checks schema text.
    pub fn parse(text: &str) -> Result<Schema, SchemaError> {
        let schema: Schema =
            serde_json::from_str(text).map_err(|e| SchemaError::Invalid(e.to_string()))?;
        schema.check()?;
        Ok(schema)
    }

    fn check(&self) -> Result<(), SchemaError> {
        for (name, collection) in &self.collections {
            for (field, rule) in &collection.fields {
                if let (Some(lo), Some(hi)) = (rule.min_length, rule.max_length)
                    && lo > hi
                {
                    return Err(SchemaError::Invalid(format!(
                        "{name}.{field}: min_length is greater than max_length"
                    )));
                }
                if let (Some(lo), Some(hi)) = (rule.min, rule.max)
                    && lo > hi
                {
                    return Err(SchemaError::Invalid(format!(
                        "{name}.{field}: min is greater than max"
                    )));
                }
            }
            for field in &collection.set_fields {
                if field.is_empty() {
                    return Err(SchemaError::Invalid(format!(
                        "{name}: set field names must not be empty"
                    )));
                }
            }
        }
        Ok(())
    }

    /// The policy of `collection` (`lww` if undeclared).
    pub fn policy(&self, collection: &Collection) -> CollectionPolicy {
        match self.collections.get(collection) {
            Some(c) => c.policy(),
            None => CollectionPolicy::lww(),
        }
    }

    /// The declared policies, as `welcome` announces them.
    pub fn policies(&self) -> BTreeMap<Collection, CollectionPolicy> {
        self.collections
            .iter()
            .map(|(name, c)| (name.clone(), c.policy()))
            .collect()
    }

    /// Checks a document state against the collection's field rules.
    pub fn validate(&self, collection: &Collection, state: &DocState) -> Result<(), Rejection> {
        let Some(declared) = self.collections.get(collection) else {
            return Ok(());
        };
        if declared.fields.is_empty() || state.is_deleted() {
            return Ok(());
        }
        let fields = state.visible_fields();
        for (name, rule) in &declared.fields {
            rule.check(name, fields.get(name))?;
        }
        Ok(())
    }
}

impl CollectionSchema {
    /// The collection's policy with its set fields.
    pub fn policy(&self) -> CollectionPolicy {
        CollectionPolicy {
            policy: self.policy,
            set_fields: self.set_fields.iter().cloned().collect(),
        }
    }
}

impl FieldRule {
    fn check(&self, name: &str, value: Option<&Value>) -> Result<(), Rejection> {
        let fail = |rule: &str| {
            Err(
                Rejection::new(RejectCode::ValidationFailed, format!("{name}: {rule}"))
                    .with_field(name),
            )
        };
        let value = match value {
            None | Some(Value::Null) => {
                return if self.required {
                    fail("required")
                } else {
                    Ok(())
                };
            }
            Some(v) => v,
        };
        if let Some(kind) = self.kind
            && !kind.matches(value)
        {
            return fail(&format!("must be {}", kind.name()));
        }
        let length = match value {
            Value::String(s) => Some((s.chars().count() as u64, "characters")),
            Value::Array(a) => Some((a.len() as u64, "elements")),
            _ => None,
        };
        if let Some((len, unit)) = length {
            if let Some(min) = self.min_length
                && len < min
            {
                return fail(&format!("at least {min} {unit}"));
            }
            if let Some(max) = self.max_length
                && len > max
            {
                return fail(&format!("at most {max} {unit}"));
            }
        }
        if let Some(n) = value.as_f64() {
            if let Some(min) = self.min
                && n < min
            {
                return fail(&format!("at least {min}"));
            }
            if let Some(max) = self.max
                && n > max
            {
                return fail(&format!("at most {max}"));
            }
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;
    use tandem_protocol::merge::apply_local;
    use tandem_protocol::{DeviceId, DocId, Hlc, Mutation, MutationId, Op, SpaceId};

    fn schema() -> Schema {
        Schema::parse(
            r#"{"collections": {"tasks": {"policy": "server_wins", "set_fields": ["tags"],
                "fields": {"title": {"type": "string", "required": true, "max_length": 5},
                           "n": {"type": "integer", "min": 0, "max": 3}}}}}"#,
        )
        .unwrap()
    }

    fn state(fields: Value) -> DocState {
        let m = Mutation {
            mutation_id: MutationId::generate(),
            space: SpaceId::new("s").unwrap(),
            collection: Collection::new("tasks").unwrap(),
            doc_id: DocId::new("d").unwrap(),
            op: Op::Put {
                fields: fields.as_object().unwrap().clone(),
            },
            base_version: None,
            hlc: Hlc::new(1, 0, DeviceId::new("a").unwrap()),
            device_id: DeviceId::new("a").unwrap(),
            fence: None,
        };
        apply_local(None, &m, &CollectionPolicy::lww())
            .unwrap()
            .unwrap()
    }

    #[test]
    fn rules_name_the_field_and_the_rule() {
        let s = schema();
        let tasks = Collection::new("tasks").unwrap();
        assert!(s.validate(&tasks, &state(json!({"title": "ok"}))).is_ok());
        let cases = [
            (json!({}), "title: required"),
            (json!({"title": 3}), "title: must be a string"),
            (json!({"title": "toolong"}), "title: at most 5 characters"),
            (json!({"title": "a", "n": 1.5}), "n: must be an integer"),
            (json!({"title": "a", "n": 9}), "n: at most 3"),
        ];
        for (fields, reason) in cases {
            let r = s.validate(&tasks, &state(fields)).unwrap_err();
            assert_eq!(r.code, RejectCode::ValidationFailed);
            assert_eq!(r.reason, reason);
        }
        assert_eq!(s.policy(&tasks).policy, Policy::ServerWins);
        assert!(s.policy(&tasks).is_set_field("tags"));
        assert_eq!(
            s.policy(&Collection::new("other").unwrap()),
            CollectionPolicy::lww()
        );
    }

    #[test]
    fn bad_schemas_are_refused() {
        assert!(Schema::parse(r#"{"collections": {"a": {"policy": "nope"}}}"#).is_err());
        assert!(Schema::parse(r#"{"collections": {"a": {"colour": 1}}}"#).is_err());
        assert!(
            Schema::parse(r#"{"collections": {"a": {"fields": {"x": {"min": 3, "max": 1}}}}}"#)
                .is_err()
        );
        assert!(Schema::parse(r#"{"collections": {"bad name": {}}}"#).is_err());
    }
}
