//! The client sync engine against a real server: devices with real SQLite
//! databases, over real sockets.

#![allow(clippy::unwrap_used)]

use serde_json::json;
use tandem_core::DocKey;
use tandem_e2e::{Device, TestServer, server_docs};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_write_on_one_device_reaches_another() {
    let server = TestServer::dev().await;
    let url = server.http_url();
    let phone = Device::online(&url, "alice", "phone").await;
    let laptop = Device::online(&url, "alice", "laptop").await;
    phone
        .client
        .put(DocKey::personal("tasks", "t1"), r#"{"title":"milk"}"#)
        .unwrap();
    phone.settle().await;
    laptop.settle().await;
    let docs = laptop.docs(None, "tasks");
    assert_eq!(docs["t1"].0, json!({"title": "milk"}));
    assert_eq!(docs, phone.docs(None, "tasks"));
    assert_eq!(
        docs,
        server_docs(&url, "alice", "personal:alice", "tasks").await
    );
}
