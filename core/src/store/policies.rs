//! The merge policy of each collection, as the server announced it (or the
//! app seeded it before the first sync).

use std::collections::HashMap;

use rusqlite::{Connection, Transaction, TransactionBehavior, params};
use tandem_protocol::{Collection, CollectionPolicy, SpaceId};

use crate::document::DocRef;
use crate::error::Error;
use crate::store::Store;
use crate::store::views::rebuild_view;

pub(crate) fn load_policies(
    conn: &Connection,
) -> Result<HashMap<Collection, CollectionPolicy>, Error> {
    let mut stmt = conn.prepare("SELECT collection, policy FROM policies")?;
    let rows = stmt.query_map([], |row| {
        Ok((row.get::<_, String>(0)?, row.get::<_, String>(1)?))
    })?;
    let mut out = HashMap::new();
    for row in rows {
        let (collection, policy) = row?;
        let collection =
            Collection::new(collection).map_err(|e| Error::CorruptStore(format!("policy: {e}")))?;
        let policy = serde_json::from_str(&policy)
            .map_err(|e| Error::CorruptStore(format!("policy of {collection}: {e}")))?;
        out.insert(collection, policy);
    }
    Ok(out)
}

impl Store {
    /// Stores the merge policy of `collection` (normally the one the server
    /// announced) and rebuilds the views of its documents that have pending
    /// writes, the only views a policy affects.
    pub fn set_policy(
        &self,
        collection: &Collection,
        policy: &CollectionPolicy,
    ) -> Result<(), Error> {
        let changed = self.with_writer(|writer| {
            let tx = writer
                .conn
                .transaction_with_behavior(TransactionBehavior::Immediate)?;
            let docs = set_policy_in(&tx, collection, policy)?;
            tx.commit()?;
            writer.policies.insert(collection.clone(), policy.clone());
            Ok(docs)
        })?;
        self.announce(changed);
        Ok(())
    }
}

/// Stores `policy` for `collection` inside `tx` and rebuilds the views it
/// affects; returns them. The caller updates the writer's copy of the
/// policies once `tx` commits.
pub(crate) fn set_policy_in(
    tx: &Transaction<'_>,
    collection: &Collection,
    policy: &CollectionPolicy,
) -> Result<Vec<DocRef>, Error> {
    let json = serde_json::to_string(policy)
        .map_err(|e| Error::CorruptStore(format!("policy of {collection}: {e}")))?;
    tx.execute(
        "INSERT INTO policies (collection, policy) VALUES (?1, ?2)
         ON CONFLICT (collection) DO UPDATE SET policy = excluded.policy",
        params![collection.as_str(), json],
    )?;
    let docs = {
        let mut stmt =
            tx.prepare("SELECT space, id FROM documents WHERE collection = ?1 AND pending > 0")?;
        let rows = stmt.query_map([collection.as_str()], |row| {
            Ok((row.get::<_, String>(0)?, row.get::<_, String>(1)?))
        })?;
        let mut docs = Vec::new();
        for row in rows {
            let (space, id) = row?;
            let corrupt = |e| Error::CorruptStore(format!("document key: {e}"));
            docs.push(DocRef {
                space: SpaceId::new(space).map_err(corrupt)?,
                collection: collection.clone(),
                id: id.parse().map_err(corrupt)?,
            });
        }
        docs
    };
    for doc in &docs {
        rebuild_view(tx, doc, policy)?;
    }
    Ok(docs)
}
