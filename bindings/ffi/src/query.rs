//! Queries, as records the app builds.

/// A query on one collection of one space: filters on indexed fields, an
/// order, a limit and a position to continue after. Deleted documents are
/// never returned. Filters and orders name fields of a declared index
/// ([`Client::declare_index`](crate::Client::declare_index)).
#[derive(Debug, Clone, PartialEq, uniffi::Record)]
pub struct Query {
    /// The collection.
    pub collection: String,
    /// The space; none means the user's personal space.
    #[uniffi(default = None)]
    pub space: Option<String>,
    /// Conditions that must all hold.
    #[uniffi(default = [])]
    pub filters: Vec<Filter>,
    /// The indexed field to order by; none orders by document id. Ties are
    /// broken by document id.
    #[uniffi(default = None)]
    pub order_by: Option<String>,
    /// Largest first.
    #[uniffi(default = false)]
    pub descending: bool,
    /// At most this many documents.
    #[uniffi(default = None)]
    pub limit: Option<u32>,
    /// Continue after this document id (keyset paging: the id of the last
    /// document of the previous page).
    #[uniffi(default = None)]
    pub after: Option<String>,
}

/// One condition on an indexed field.
#[derive(Debug, Clone, PartialEq, uniffi::Record)]
pub struct Filter {
    /// A top-level field of the document.
    pub field: String,
    /// How the field compares to `value`.
    pub op: FilterOp,
    /// The value compared to.
    pub value: FilterValue,
}

/// A comparison.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, uniffi::Enum)]
pub enum FilterOp {
    /// Equal (a null value matches a missing or null field).
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

/// A scalar a field is compared to. Different kinds order as null <
/// numbers (booleans as 0 and 1) < text.
#[derive(Debug, Clone, PartialEq, uniffi::Enum)]
pub enum FilterValue {
    /// JSON `null`.
    Null,
    /// `true` or `false`.
    Bool {
        /// The value.
        value: bool,
    },
    /// A whole number.
    Integer {
        /// The value.
        value: i64,
    },
    /// A number with a fraction.
    Real {
        /// The value.
        value: f64,
    },
    /// A string.
    Text {
        /// The value.
        value: String,
    },
}

impl From<Query> for tandem_core::Query {
    fn from(query: Query) -> tandem_core::Query {
        tandem_core::Query {
            space: query.space,
            collection: query.collection,
            filters: query.filters.into_iter().map(Into::into).collect(),
            order_by: query.order_by,
            descending: query.descending,
            limit: query.limit,
            after: query.after,
        }
    }
}

impl From<Filter> for tandem_core::Filter {
    fn from(filter: Filter) -> tandem_core::Filter {
        tandem_core::Filter {
            field: filter.field,
            op: filter.op.into(),
            value: filter.value.into(),
        }
    }
}

impl From<FilterOp> for tandem_core::FilterOp {
    fn from(op: FilterOp) -> tandem_core::FilterOp {
        match op {
            FilterOp::Eq => tandem_core::FilterOp::Eq,
            FilterOp::Lt => tandem_core::FilterOp::Lt,
            FilterOp::Le => tandem_core::FilterOp::Le,
            FilterOp::Gt => tandem_core::FilterOp::Gt,
            FilterOp::Ge => tandem_core::FilterOp::Ge,
        }
    }
}

impl From<FilterValue> for tandem_core::FilterValue {
    fn from(value: FilterValue) -> tandem_core::FilterValue {
        match value {
            FilterValue::Null => tandem_core::FilterValue::Null,
            FilterValue::Bool { value } => tandem_core::FilterValue::Bool(value),
            FilterValue::Integer { value } => tandem_core::FilterValue::Integer(value),
            FilterValue::Real { value } => tandem_core::FilterValue::Real(value),
            FilterValue::Text { value } => tandem_core::FilterValue::Text(value),
        }
    }
}
