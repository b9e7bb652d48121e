//! The store conformance suite, run against the SQLite store.

use std::sync::Arc;

use futures::future::BoxFuture;
use tandem_server::store::conformance::StoreHarness;
use tandem_server::store::sqlite::SqliteOptions;
use tandem_server::store::{CommitListener, PushRules, SqliteStore, Store};
use tempfile::TempDir;

struct SqliteHarness {
    dir: TempDir,
}

impl SqliteHarness {
    fn new() -> SqliteHarness {
        SqliteHarness {
            dir: TempDir::new().unwrap(),
        }
    }
}

impl StoreHarness for SqliteHarness {
    fn open(
        &self,
        rules: PushRules,
        listener: Arc<dyn CommitListener>,
    ) -> BoxFuture<'_, Arc<dyn Store>> {
        let path = self.dir.path().join("conformance.db");
        Box::pin(async move {
            let store =
                SqliteStore::open(&path, rules, listener, SqliteOptions::default()).unwrap();
            Arc::new(store) as Arc<dyn Store>
        })
    }
}

tandem_server::store_conformance_tests!(SqliteHarness::new());
