//! Reads of the local view: one document, or a query.

use rusqlite::types::Value as SqlValue;
use rusqlite::{Connection, OptionalExtension, Row, params, params_from_iter};

use crate::document::{DocRef, LocalDocument};
use crate::error::Error;
use crate::query::{FilterOp, FilterValue, ResolvedQuery};
use crate::store::indexes::{collection_literal, field_expr};
use crate::store::{Store, from_sql_int};

/// Reads (fields, version, pending, deleted) from the row's columns
/// `offset..offset + 4`.
fn local_of(
    row: &Row<'_>,
    offset: usize,
    space: &str,
    collection: &str,
    id: String,
) -> rusqlite::Result<Result<LocalDocument, Error>> {
    // Borrowed text: the fields are copied once, into the result.
    let fields = row.get_ref(offset)?.as_str()?.to_owned();
    let version: Option<i64> = row.get(offset + 1)?;
    let pending: i64 = row.get(offset + 2)?;
    let deleted: bool = row.get(offset + 3)?;
    Ok(version
        .map(|v| from_sql_int(v, "version"))
        .transpose()
        .map(|version| LocalDocument {
            space: space.to_owned(),
            collection: collection.to_owned(),
            id,
            fields_json: fields,
            version,
            pending: pending > 0,
            deleted,
        }))
}

fn get(conn: &Connection, doc: &DocRef) -> Result<Option<LocalDocument>, Error> {
    let found = conn
        .prepare_cached(
            "SELECT fields, version, pending, deleted FROM documents
             WHERE space = ?1 AND collection = ?2 AND id = ?3",
        )?
        .query_row(
            params![doc.space.as_str(), doc.collection.as_str(), doc.id.as_str()],
            |row| {
                local_of(
                    row,
                    0,
                    doc.space.as_str(),
                    doc.collection.as_str(),
                    doc.id.to_string(),
                )
            },
        )
        .optional()?;
    found.transpose()
}

/// The SQL of a query and its parameters.
struct QuerySql {
    sql: String,
    params: Vec<SqlValue>,
}

/// Builds the SQL of `q`. `after` is the sort value of the document to
/// continue after (its field value, or nothing when ordering by id).
fn build_sql(q: &ResolvedQuery, after: Option<(SqlValue, String)>) -> QuerySql {
    let mut params = vec![SqlValue::Text(q.space.to_string())];
    // The collection is a literal, not a parameter: the declared indexes
    // are partial indexes of one collection, and SQLite uses a partial
    // index only when the query's WHERE names the same literal. `deleted`
    // is selected as the constant it is here, so that every column comes
    // from the covering index.
    let mut sql = format!(
        "SELECT id, fields, version, pending, 0 FROM documents
         WHERE space = ?1 AND collection = {} AND deleted = 0",
        collection_literal(&q.collection)
    );
    for filter in &q.filters {
        let expr = field_expr(&filter.field);
        if filter.value == FilterValue::Null {
            // `= NULL` matches nothing in SQL; a missing field and a JSON
            // null both read as NULL.
            match filter.op {
                FilterOp::Eq | FilterOp::Le | FilterOp::Ge => {
                    sql.push_str(&format!(" AND {expr} IS NULL"));
                }
                FilterOp::Lt | FilterOp::Gt => sql.push_str(" AND 0"),
            }
            continue;
        }
        params.push(filter.value.to_sql());
        sql.push_str(&format!(
            " AND {expr} {} ?{}",
            filter.op.sql(),
            params.len()
        ));
    }
    let key = q.order_by.as_deref().map(field_expr);
    let (cmp, dir) = if q.descending {
        ("<", "DESC")
    } else {
        (">", "ASC")
    };
    if let Some((value, id)) = after {
        params.push(SqlValue::Text(id));
        let id_param = params.len();
        match &key {
            None => sql.push_str(&format!(" AND id {cmp} ?{id_param}")),
            Some(key) => {
                // (key, id) strictly after (value, id) in the query's order.
                // SQLite puts NULL first in ascending order, last in
                // descending order.
                if value == SqlValue::Null {
                    if q.descending {
                        sql.push_str(&format!(" AND {key} IS NULL AND id < ?{id_param}"));
                    } else {
                        sql.push_str(&format!(" AND ({key} IS NOT NULL OR id > ?{id_param})"));
                    }
                } else {
                    params.push(value);
                    let v = params.len();
                    let tail = if q.descending {
                        format!(" OR {key} IS NULL")
                    } else {
                        String::new()
                    };
                    sql.push_str(&format!(
                        " AND ({key} {cmp} ?{v} OR ({key} = ?{v} AND id {cmp} ?{id_param}){tail})"
                    ));
                }
            }
        }
    }
    match &key {
        Some(key) => sql.push_str(&format!(" ORDER BY {key} {dir}, id {dir}")),
        None => sql.push_str(&format!(" ORDER BY id {dir}")),
    }
    if let Some(limit) = q.limit {
        params.push(SqlValue::Integer(i64::from(limit)));
        sql.push_str(&format!(" LIMIT ?{}", params.len()));
    }
    QuerySql { sql, params }
}

fn query(conn: &Connection, q: &ResolvedQuery) -> Result<Vec<LocalDocument>, Error> {
    let after = match &q.after {
        None => None,
        Some(id) => {
            let key = q
                .order_by
                .as_deref()
                .map_or_else(|| "NULL".to_owned(), field_expr);
            let value: Option<SqlValue> = conn
                .prepare_cached(&format!(
                    "SELECT {key} FROM documents WHERE space = ?1 AND collection = ?2 AND id = ?3"
                ))?
                .query_row(
                    params![q.space.as_str(), q.collection.as_str(), id.as_str()],
                    |row| row.get(0),
                )
                .optional()?;
            let value = value.ok_or_else(|| Error::CursorNotFound {
                collection: q.collection.to_string(),
                id: id.to_string(),
            })?;
            Some((value, id.to_string()))
        }
    };
    let built = build_sql(q, after);
    let mut stmt = conn.prepare_cached(&built.sql)?;
    let space = q.space.as_str();
    let collection = q.collection.as_str();
    let rows = stmt.query_map(params_from_iter(built.params.iter()), |row| {
        let id: String = row.get(0)?;
        local_of(row, 1, space, collection, id)
    })?;
    let mut out = Vec::new();
    for row in rows {
        out.push(row??);
    }
    Ok(out)
}

impl Store {
    /// The local view of `doc`, including a tombstone if it is deleted.
    pub fn get(&self, doc: &DocRef) -> Result<Option<LocalDocument>, Error> {
        self.readers.with(|conn| get(conn, doc))
    }

    /// Checks that every field `q` filters or orders on is indexed.
    pub fn check_query(&self, q: &ResolvedQuery) -> Result<(), Error> {
        let catalog = self.catalog();
        let fields = q
            .filters
            .iter()
            .map(|f| f.field.as_str())
            .chain(q.order_by.as_deref());
        for field in fields {
            if !catalog.is_indexed(&q.collection, field) {
                return Err(Error::NotIndexed {
                    collection: q.collection.to_string(),
                    field: field.to_owned(),
                });
            }
        }
        Ok(())
    }

    /// Runs a query (checked with [`Store::check_query`] first).
    pub fn query(&self, q: &ResolvedQuery) -> Result<Vec<LocalDocument>, Error> {
        self.check_query(q)?;
        self.readers.with(|conn| query(conn, q))
    }

    /// How SQLite runs `q`, one line per step (for tests and diagnostics).
    #[cfg_attr(not(test), expect(dead_code, reason = "for diagnostics and tests"))]
    pub fn explain_query(&self, q: &ResolvedQuery) -> Result<Vec<String>, Error> {
        let built = build_sql(q, None);
        self.readers.with(|conn| {
            let mut stmt = conn.prepare(&format!("EXPLAIN QUERY PLAN {}", built.sql))?;
            let rows = stmt.query_map(params_from_iter(built.params.iter()), |row| {
                row.get::<_, String>(3)
            })?;
            Ok(rows.collect::<Result<Vec<_>, _>>()?)
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::query::Query;
    use crate::store::Write;
    use crate::store::test_support::open_store;
    use serde_json::json;
    use tandem_protocol::{Collection, DocId, SpaceId};

    fn message(store: &Store, id: &str, conversation: &str, sent_at: i64) {
        let doc = DocRef {
            space: SpaceId::new("personal:alice").unwrap(),
            collection: Collection::new("messages").unwrap(),
            id: DocId::new(id).unwrap(),
        };
        let fields = json!({"conversation": conversation, "sent_at": sent_at, "body": id});
        store
            .write(&doc, Write::Put(fields.as_object().unwrap().clone()))
            .unwrap();
    }

    fn resolve(q: Query) -> ResolvedQuery {
        ResolvedQuery::resolve(&q, &SpaceId::new("personal:alice").unwrap()).unwrap()
    }

    fn ids(docs: &[LocalDocument]) -> Vec<&str> {
        docs.iter().map(|d| d.id.as_str()).collect()
    }

    #[test]
    fn an_equality_filter_and_an_order_walk_the_declared_index() {
        let dir = tempfile::tempdir().unwrap();
        let store = open_store(dir.path());
        store
            .declare_index(
                &Collection::new("messages").unwrap(),
                &["conversation".into(), "sent_at".into()],
            )
            .unwrap();
        message(&store, "m1", "c1", 30);
        message(&store, "m2", "c2", 10);
        message(&store, "m3", "c1", 10);
        message(&store, "m4", "c1", 20);

        let q = resolve(
            Query::new("messages")
                .eq("conversation", "c1")
                .order("sent_at"),
        );
        assert_eq!(ids(&store.query(&q).unwrap()), ["m3", "m4", "m1"]);
        let plan = store.explain_query(&q).unwrap().join("\n");
        assert!(
            plan.contains("field_index:messages:conversation,sent_at"),
            "{plan}"
        );
        assert!(!plan.contains("TEMP B-TREE"), "no sort step: {plan}");
        assert!(plan.contains("COVERING INDEX"), "no table lookups: {plan}");
    }

    #[test]
    fn paging_after_a_document_continues_in_order() {
        let dir = tempfile::tempdir().unwrap();
        let store = open_store(dir.path());
        store
            .declare_index(&Collection::new("messages").unwrap(), &["sent_at".into()])
            .unwrap();
        // Equal sort values are ordered by id.
        for (id, at) in [("a", 1), ("b", 2), ("c", 2), ("d", 3), ("e", 4)] {
            message(&store, id, "c1", at);
        }
        for desc in [false, true] {
            let mut seen = Vec::new();
            let mut after: Option<String> = None;
            loop {
                let mut q = Query::new("messages").order("sent_at").first(2);
                q.descending = desc;
                q.after = after.clone();
                let page = store.query(&resolve(q)).unwrap();
                if page.is_empty() {
                    break;
                }
                after = page.last().map(|d| d.id.clone());
                seen.extend(page.into_iter().map(|d| d.id));
            }
            let mut expected = vec!["a", "b", "c", "d", "e"];
            if desc {
                expected.reverse();
            }
            assert_eq!(seen, expected, "descending: {desc}");
        }
    }
}
