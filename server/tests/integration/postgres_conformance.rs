//! The store conformance suite, run against the PostgreSQL store: each case
//! on a schema of its own in the database named by
//! `TANDEM_TEST_POSTGRES_URL` (see `scripts/test.sh`).

use std::sync::Arc;

use futures::future::BoxFuture;
use tandem_server::store::conformance::StoreHarness;
use tandem_server::store::postgres::testing::TestSchema;
use tandem_server::store::{CommitListener, PostgresStore, PushRules, Store};

struct PostgresHarness {
    schema: Option<TestSchema>,
}

impl PostgresHarness {
    fn new() -> PostgresHarness {
        PostgresHarness {
            schema: TestSchema::new("conformance"),
        }
    }
}

impl StoreHarness for PostgresHarness {
    fn open(
        &self,
        rules: PushRules,
        listener: Arc<dyn CommitListener>,
    ) -> BoxFuture<'_, Arc<dyn Store>> {
        Box::pin(async move {
            let schema = self
                .schema
                .as_ref()
                .expect("PostgreSQL tests are not skipped");
            let store = PostgresStore::open(schema.options(), rules, listener)
                .await
                .unwrap();
            Arc::new(store) as Arc<dyn Store>
        })
    }

    fn available(&self) -> bool {
        self.schema.is_some()
    }
}

tandem_server::store_conformance_tests!(PostgresHarness::new());
