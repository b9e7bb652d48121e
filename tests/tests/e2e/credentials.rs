//! The device's credentials kept by the app's credential store (the
//! Keychain, the Android Keystore; here the in-memory store): the tokens
//! never reach the database file, tokens an earlier version left there
//! move to the store, and signing out removes everything.

use std::sync::Arc;
use std::time::Duration;

use tandem_core::{CredentialStore, DocKey, MemoryCredentialStore};
use tandem_e2e::{Device, TestServer, TestServerOptions, contains_text};

/// The tokens in the store's value.
fn tokens(store: &MemoryCredentialStore) -> (String, String) {
    let value = store
        .load()
        .unwrap_or_else(|e| panic!("{e}"))
        .unwrap_or_else(|| panic!("the store holds no credentials"));
    let json: serde_json::Value = serde_json::from_slice(&value).unwrap_or_else(|e| panic!("{e}"));
    let text = |k: &str| {
        json[k]
            .as_str()
            .unwrap_or_else(|| panic!("no {k}"))
            .to_owned()
    };
    (text("access_token"), text("refresh_token"))
}

fn key(id: &str) -> DocKey {
    DocKey {
        space: None,
        collection: "tasks".into(),
        id: id.into(),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tokens_kept_by_a_credential_store_never_reach_the_database_file() {
    // Short-lived access tokens: every HTTP call refreshes, so the store
    // sees rotated tokens too.
    let server = TestServer::start(
        TestServerOptions::dev().with(|c| c.credentials.access = Duration::from_secs(5)),
    )
    .await;
    let store = Arc::new(MemoryCredentialStore::new());
    let shared: Arc<dyn CredentialStore> = store.clone();
    let device = Device::offline_with("alice", "phone", |c| c.credential_store = Some(shared));
    device.start_sync(&server.http_url()).await;
    device
        .client
        .put(key("t1"), r#"{"title":"secret-free"}"#)
        .unwrap_or_else(|e| panic!("{e}"));
    device.settle().await;
    let first = tokens(&store);
    device
        .client
        .spaces()
        .await
        .unwrap_or_else(|e| panic!("spaces: {e}"));
    let rotated = tokens(&store);
    assert_ne!(first.1, rotated.1, "the refresh rotated the stored tokens");
    device.client.stop_sync().await;

    let bytes = device.database_bytes();
    assert!(
        contains_text(&bytes, "secret-free"),
        "the check reads the real file"
    );
    for token in [&first.0, &first.1, &rotated.0, &rotated.1] {
        assert!(
            !contains_text(&bytes, token),
            "a token is in the database file"
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tokens_an_earlier_version_left_in_the_database_move_to_the_store() {
    let server = TestServer::dev().await;
    let device = Device::online(&server.http_url(), "alice", "phone").await;
    device.settle().await;
    device.client.stop_sync().await;
    let refresh: String = {
        let conn = rusqlite::Connection::open(device.dir().join("tandem.db"))
            .unwrap_or_else(|e| panic!("{e}"));
        conn.query_row("SELECT refresh_token FROM credentials", [], |r| r.get(0))
            .unwrap_or_else(|e| panic!("{e}"))
    };
    assert!(
        contains_text(&device.database_bytes(), &refresh),
        "kept in the file without a store"
    );
    let device_id = device.client.device_id();

    // The app starts giving a credential store.
    let store = Arc::new(MemoryCredentialStore::new());
    let shared: Arc<dyn CredentialStore> = store.clone();
    let device = device.reopen_with(|c| c.credential_store = Some(shared));
    assert_eq!(tokens(&store).1, refresh, "the stored credentials moved");
    assert!(
        !contains_text(&device.database_bytes(), &refresh),
        "the token was erased from the file"
    );
    // Still the same registered device: it syncs with the moved tokens.
    device.start_sync(&server.http_url()).await;
    device
        .client
        .put(key("t2"), "{}")
        .unwrap_or_else(|e| panic!("{e}"));
    device.settle().await;
    assert_eq!(device.client.device_id(), device_id);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn wipe_removes_the_credentials_the_database_and_the_outbox() {
    let server = TestServer::dev().await;
    let store = Arc::new(MemoryCredentialStore::new());
    let shared: Arc<dyn CredentialStore> = store.clone();
    let device = Device::offline_with("alice", "phone", |c| c.credential_store = Some(shared));
    device.start_sync(&server.http_url()).await;
    device.settle().await;
    device.client.stop_sync().await;
    // Three writes that never reach the server.
    for id in ["a", "b", "c"] {
        device
            .client
            .put(key(id), "{}")
            .unwrap_or_else(|e| panic!("{e}"));
    }
    let old_id = device.client.device_id();
    let discarded = device.client.wipe().unwrap_or_else(|e| panic!("wipe: {e}"));
    assert_eq!(discarded, 3, "the unsent writes are counted");
    assert!(store.load().unwrap_or_else(|e| panic!("{e}")).is_none());
    assert!(
        matches!(
            device.client.put(key("d"), "{}"),
            Err(tandem_core::Error::Closed)
        ),
        "the client is closed"
    );
    for name in ["tandem.db", "tandem.db-wal", "tandem.db-shm"] {
        assert!(!device.dir().join(name).exists(), "{name} is left");
    }
    let fresh = device.reopen();
    assert_ne!(fresh.client.device_id(), old_id, "a new device");
    assert!(fresh.docs(None, "tasks").is_empty());
    assert_eq!(
        fresh
            .client
            .status()
            .unwrap_or_else(|e| panic!("{e}"))
            .pending,
        0
    );
}
