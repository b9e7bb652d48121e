//! Queries over the local view.
//!
//! A [`Query`] reads one collection of one space: equality and range filters
//! on declared indexed fields, an order (an indexed field or the document
//! id, ascending or descending), a limit, and a position to continue after
//! (keyset paging: the id of the last document of the previous page).
//! Deleted documents are never returned.
//!
//! Filters and orders are restricted to declared indexed fields
//! ([`Client::declare_index`](crate::Client::declare_index)); a query naming
//! another field fails with [`Error::NotIndexed`]. A query is answered from
//! one index range, in order, when a declared index starts with its
//! equality fields and continues with its order field (for example
//! `(conversation, sent_at)` for "the messages of a conversation by time").
//! Other combinations of indexed fields give the same results but may read
//! the whole collection of the space.

use serde_json::Value;
use tandem_protocol::{Collection, DocId, SpaceId};

use crate::error::Error;

/// A query on one collection.
#[derive(Debug, Clone, PartialEq)]
pub struct Query {
    /// The space; `None` is the user's personal space.
    pub space: Option<String>,
    /// The collection.
    pub collection: String,
    /// All must hold.
    pub filters: Vec<Filter>,
    /// The indexed field to order by; `None` orders by document id. Ties
    /// are broken by document id, so the order is total.
    pub order_by: Option<String>,
    /// Largest first.
    pub descending: bool,
    /// At most this many documents.
    pub limit: Option<u32>,
    /// Continue after this document (the id of the last document of the
    /// previous page), in the query's order.
    pub after: Option<String>,
}

/// One condition on an indexed field.
#[derive(Debug, Clone, PartialEq)]
pub struct Filter {
    /// The field (a top-level field of the document).
    pub field: String,
    /// How the field's value compares to `value`.
    pub op: FilterOp,
    /// The value compared to.
    pub value: FilterValue,
}

/// A comparison.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum FilterOp {
    /// Equal (`null` matches a missing or null field).
    Eq,
    /// Less than.
    Lt,
    /// Less than or equal.
    Le,
    /// Greater than.
    Gt,
    /// Greater than or equal.
    Ge,
}

impl FilterOp {
    pub(crate) fn sql(self) -> &'static str {
        match self {
            FilterOp::Eq => "=",
            FilterOp::Lt => "<",
            FilterOp::Le => "<=",
            FilterOp::Gt => ">",
            FilterOp::Ge => ">=",
        }
    }
}

/// A scalar a field is compared to. Values of different kinds are ordered
/// `null` < numbers (and booleans, as 0 and 1) < text, as SQLite orders
/// them.
#[derive(Debug, Clone, PartialEq)]
pub enum FilterValue {
    /// JSON `null`.
    Null,
    /// `true` or `false`.
    Bool(bool),
    /// A whole number.
    Integer(i64),
    /// A number with a fraction (or too large for `Integer`).
    Real(f64),
    /// A string.
    Text(String),
}

impl FilterValue {
    /// The filter value of a JSON scalar; `None` for arrays and objects,
    /// which cannot be compared.
    pub fn from_json(value: &Value) -> Option<FilterValue> {
        Some(match value {
            Value::Null => FilterValue::Null,
            Value::Bool(b) => FilterValue::Bool(*b),
            Value::Number(n) => match n.as_i64() {
                Some(i) => FilterValue::Integer(i),
                None => FilterValue::Real(n.as_f64()?),
            },
            Value::String(s) => FilterValue::Text(s.clone()),
            Value::Array(_) | Value::Object(_) => return None,
        })
    }

    /// The SQLite value a field holding this JSON value has in an index.
    pub(crate) fn to_sql(&self) -> rusqlite::types::Value {
        use rusqlite::types::Value as Sql;
        match self {
            FilterValue::Null => Sql::Null,
            // SQLite's JSON functions give true and false as 1 and 0.
            FilterValue::Bool(b) => Sql::Integer(i64::from(*b)),
            FilterValue::Integer(i) => Sql::Integer(*i),
            FilterValue::Real(f) => Sql::Real(*f),
            FilterValue::Text(s) => Sql::Text(s.clone()),
        }
    }
}

impl From<&str> for FilterValue {
    fn from(s: &str) -> FilterValue {
        FilterValue::Text(s.to_owned())
    }
}

impl From<String> for FilterValue {
    fn from(s: String) -> FilterValue {
        FilterValue::Text(s)
    }
}

impl From<i64> for FilterValue {
    fn from(i: i64) -> FilterValue {
        FilterValue::Integer(i)
    }
}

impl From<f64> for FilterValue {
    fn from(f: f64) -> FilterValue {
        FilterValue::Real(f)
    }
}

impl From<bool> for FilterValue {
    fn from(b: bool) -> FilterValue {
        FilterValue::Bool(b)
    }
}

impl Query {
    /// Every live document of `collection` in the personal space, by id.
    pub fn new(collection: &str) -> Query {
        Query {
            space: None,
            collection: collection.to_owned(),
            filters: Vec::new(),
            order_by: None,
            descending: false,
            limit: None,
            after: None,
        }
    }

    /// The same query in the space `space`.
    pub fn in_space(mut self, space: &str) -> Query {
        self.space = Some(space.to_owned());
        self
    }

    /// Adds the condition `field op value`.
    pub fn filter(mut self, field: &str, op: FilterOp, value: impl Into<FilterValue>) -> Query {
        self.filters.push(Filter {
            field: field.to_owned(),
            op,
            value: value.into(),
        });
        self
    }

    /// Adds the condition `field == value`.
    pub fn eq(self, field: &str, value: impl Into<FilterValue>) -> Query {
        self.filter(field, FilterOp::Eq, value)
    }

    /// Orders by `field` (ascending unless [`Query::desc`]).
    pub fn order(mut self, field: &str) -> Query {
        self.order_by = Some(field.to_owned());
        self
    }

    /// Largest first.
    pub fn desc(mut self) -> Query {
        self.descending = true;
        self
    }

    /// At most `n` documents.
    pub fn first(mut self, n: u32) -> Query {
        self.limit = Some(n);
        self
    }

    /// Continues after the document `id`.
    pub fn after_id(mut self, id: &str) -> Query {
        self.after = Some(id.to_owned());
        self
    }
}

/// A query whose names are validated and whose space is resolved. Checking
/// fields against the declared indexes is the store's job.
#[derive(Debug, Clone, PartialEq)]
pub(crate) struct ResolvedQuery {
    pub space: SpaceId,
    pub collection: Collection,
    pub filters: Vec<Filter>,
    pub order_by: Option<String>,
    pub descending: bool,
    pub limit: Option<u32>,
    pub after: Option<DocId>,
}

impl ResolvedQuery {
    pub fn resolve(query: &Query, personal_space: &SpaceId) -> Result<ResolvedQuery, Error> {
        let space = match &query.space {
            Some(space) => SpaceId::new(space.as_str())?,
            None => personal_space.clone(),
        };
        Ok(ResolvedQuery {
            space,
            collection: Collection::new(query.collection.as_str())?,
            filters: query.filters.clone(),
            order_by: query.order_by.clone(),
            descending: query.descending,
            limit: query.limit,
            after: query.after.as_deref().map(DocId::new).transpose()?,
        })
    }

    /// Whether a change to a document of `space`/`collection` can change
    /// this query's result.
    pub fn watches(&self, space: &SpaceId, collection: &Collection) -> bool {
        &self.space == space && &self.collection == collection
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn json_scalars_become_filter_values() {
        assert_eq!(
            FilterValue::from_json(&json!("c1")),
            Some(FilterValue::Text("c1".into()))
        );
        assert_eq!(
            FilterValue::from_json(&json!(3)),
            Some(FilterValue::Integer(3))
        );
        assert_eq!(
            FilterValue::from_json(&json!(2.5)),
            Some(FilterValue::Real(2.5))
        );
        assert_eq!(
            FilterValue::from_json(&json!(true)),
            Some(FilterValue::Bool(true))
        );
        assert_eq!(
            FilterValue::from_json(&json!(null)),
            Some(FilterValue::Null)
        );
        assert_eq!(FilterValue::from_json(&json!([1])), None);
        assert_eq!(FilterValue::from_json(&json!({"a": 1})), None);
    }
}
