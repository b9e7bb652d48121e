//! TLS end to end: a certificate authority made by the test, a server that
//! terminates TLS with a certificate it signed, and real devices that
//! register, refresh, sync and hear live changes over `https://` and
//! `wss://`; and every way trust can fail (unknown authority, wrong host
//! name, expired certificate, pin mismatch, a plain server) gives a `tls`
//! error at once, retried with backoff rather than in a loop.

use std::time::Duration;

use tandem_core::{DocKey, Error, SyncConfig, SyncErrorKind};
use tandem_e2e::tls::{ServerCert, TestCa, Validity};
use tandem_e2e::{Device, PATIENCE, Proxy, TestServer, TestServerOptions, eventually, test_tuning};

async fn tls_server(cert: &ServerCert) -> TestServer {
    let identity = cert.identity.clone();
    TestServer::start(TestServerOptions::dev().with(|c| c.tls = Some(identity))).await
}

/// A sync configuration for `url` that trusts `roots`.
fn config(url: &str, roots: &[String]) -> SyncConfig {
    let mut config = SyncConfig::new(url);
    config.tuning = test_tuning();
    config.tls.trusted_roots_pem = roots.to_vec();
    config
}

fn key(id: &str) -> DocKey {
    DocKey {
        space: None,
        collection: "tasks".into(),
        id: id.into(),
    }
}

/// The refresh token the device keeps in its database.
fn stored_refresh_token(device: &Device) -> Option<String> {
    let conn = rusqlite::Connection::open(device.dir().join(tandem_core::DATABASE_FILE))
        .unwrap_or_else(|e| panic!("{e}"));
    conn.query_row("SELECT refresh_token FROM credentials", [], |r| r.get(0))
        .ok()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn devices_register_refresh_and_sync_live_over_https_and_wss() {
    let ca = TestCa::new("Tandem test CA");
    let cert = ca.localhost();
    // Access tokens that are always about to expire: every HTTP call
    // refreshes first, so refreshing over TLS is exercised too.
    let identity = cert.identity.clone();
    let server = TestServer::start(TestServerOptions::dev().with(|c| {
        c.tls = Some(identity);
        c.credentials.access = Duration::from_secs(5);
    }))
    .await;
    let url = server.https_url();
    let roots = [ca.pem()];

    let phone = Device::offline("alice", "phone");
    let laptop = Device::offline("alice", "laptop");
    phone.start_sync_with(config(&url, &roots)).await;
    laptop.start_sync_with(config(&url, &roots)).await;
    phone.settle().await;
    laptop.settle().await;

    // A live change: the laptop hears the phone's write over its wss://
    // socket without syncing on purpose.
    phone
        .client
        .put(key("t1"), r#"{"title":"over TLS"}"#)
        .unwrap_or_else(|e| panic!("{e}"));
    eventually("the laptop hears the phone's write", || {
        laptop.docs(None, "tasks").contains_key("t1")
    })
    .await;
    assert_eq!(
        laptop.docs(None, "tasks")["t1"].0["title"],
        "over TLS",
        "the laptop has the phone's fields"
    );

    // Refresh: an HTTP call with a token about to expire refreshes it first,
    // over https://, which rotates the refresh token.
    let before = stored_refresh_token(&phone).unwrap_or_else(|| panic!("phone never registered"));
    let spaces = phone
        .client
        .spaces()
        .await
        .unwrap_or_else(|e| panic!("spaces over https: {e}"));
    assert!(!spaces.is_empty());
    let after = stored_refresh_token(&phone).unwrap_or_else(|| panic!("credentials gone"));
    assert_ne!(before, after, "the device refreshed its credentials");
    let status = phone.client.status().unwrap_or_else(|e| panic!("{e}"));
    assert!(status.last_error.is_none(), "{:?}", status.last_error);
}

/// One way trust fails, and the words the error must say.
struct Failure {
    what: &'static str,
    cert: ServerCert,
    roots: Vec<String>,
    pins: Vec<String>,
    says: &'static str,
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_untrusted_server_is_a_tls_error_at_once() {
    let ca = TestCa::new("Tandem test CA");
    let other_ca = TestCa::new("Someone else's CA");
    let good = ca.localhost();
    let other_key_pin = hex_pin(&ca.localhost().der);
    let failures = vec![
        Failure {
            what: "an unknown authority",
            cert: other_ca.localhost(),
            roots: vec![ca.pem()],
            pins: vec![],
            says: "not signed by a trusted authority",
        },
        Failure {
            what: "a certificate for another host",
            cert: ca.server_cert(&["sync.other.example"], Validity::Current),
            roots: vec![ca.pem()],
            pins: vec![],
            says: "not valid for",
        },
        Failure {
            what: "an expired certificate",
            cert: ca.server_cert(&["127.0.0.1", "localhost"], Validity::Expired),
            roots: vec![ca.pem()],
            pins: vec![],
            says: "expired",
        },
        Failure {
            what: "a key that is not pinned",
            cert: ca.localhost(),
            roots: vec![ca.pem()],
            pins: vec![other_key_pin],
            says: "pinned",
        },
    ];
    for failure in failures {
        let server = tls_server(&failure.cert).await;
        let device = Device::offline("alice", "phone");
        let mut sync = config(&server.https_url(), &failure.roots);
        sync.tls.pinned_spki_sha256 = failure.pins.clone();
        device.start_sync_with(sync).await;
        device
            .client
            .put(key("t1"), "{}")
            .unwrap_or_else(|e| panic!("{e}"));
        // The bound is long; a trust failure must end the wait at once.
        let bound = Duration::from_secs(60);
        let started = tokio::time::Instant::now();
        let result = device.client.sync_once(bound).await;
        let waited = started.elapsed();
        match result {
            Err(Error::Tls(message)) => {
                assert!(
                    message.contains(failure.says),
                    "{}: the message {message:?} does not say {:?}",
                    failure.what,
                    failure.says
                );
                assert!(!message.starts_with("tls"), "prefix repeated: {message}");
            }
            other => panic!("{}: expected a tls error, got {other:?}", failure.what),
        }
        assert!(
            waited < bound / 2,
            "{}: sync_once waited for its bound instead of reporting",
            failure.what
        );
        let status = device.client.status().unwrap_or_else(|e| panic!("{e}"));
        let error = status
            .last_error
            .unwrap_or_else(|| panic!("{}: no error in the status", failure.what));
        assert_eq!(error.kind, SyncErrorKind::Tls, "{}", failure.what);
        assert_eq!(status.pending, 1, "{}: the write is kept", failure.what);
        device.client.stop_sync().await;
    }

    // The same server, trusted and pinned correctly, works.
    let server = tls_server(&good).await;
    let device = Device::offline("alice", "phone");
    let mut sync = config(&server.https_url(), &[ca.pem()]);
    sync.tls.pinned_spki_sha256 = vec![hex_pin(&good.der)];
    device.start_sync_with(sync).await;
    device
        .client
        .put(key("t1"), "{}")
        .unwrap_or_else(|e| panic!("{e}"));
    device.settle().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_plain_server_behind_an_https_url_is_a_tls_error() {
    let server = TestServer::dev().await;
    let device = Device::offline("alice", "phone");
    let url = format!("https://{}", server.addr());
    device.start_sync_with(config(&url, &[])).await;
    match device.client.sync_once(PATIENCE).await {
        Err(Error::Tls(message)) => {
            assert!(message.contains("did not answer with TLS"), "{message}")
        }
        other => panic!("expected a tls error, got {other:?}"),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_tls_failure_is_retried_with_backoff_not_in_a_loop() {
    let ca = TestCa::new("Tandem test CA");
    let untrusted = TestCa::new("Untrusted CA").localhost();
    let server = tls_server(&untrusted).await;
    let proxy = Proxy::start(server.addr()).await;
    let device = Device::offline("alice", "phone");
    // The default backoff (0.5 s doubling), not the tests' quick one.
    let url = proxy.http_url().replacen("http://", "https://", 1);
    let mut sync = SyncConfig::new(&url);
    sync.tls.trusted_roots_pem = vec![ca.pem()];
    device.start_sync_with(sync).await;
    eventually("a first attempt", || proxy.accepted() >= 1).await;
    tokio::time::sleep(Duration::from_secs(3)).await;
    let attempts = proxy.accepted();
    // Attempts at 0 s, 0.5 s, 1.5 s, 3.5 s, 7.5 s, 15.5 s (each wait up to
    // a fifth longer): a handful in the 3 s or more just waited (more than
    // 3 s when the machine is loaded, which only adds attempts at these
    // times), never a storm.
    assert!(attempts <= 6, "{attempts} connection attempts in about 3 s");
    // And it keeps trying: the next ones come, however slowly the machine
    // makes the failed handshakes.
    eventually("more attempts", || proxy.accepted() >= 3).await;
    let status = device.client.status().unwrap_or_else(|e| panic!("{e}"));
    assert_eq!(status.last_error.map(|e| e.kind), Some(SyncErrorKind::Tls));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_bad_server_url_or_tls_setting_fails_start_sync_at_once() {
    let device = Device::offline("alice", "phone");
    for (url, roots, pins) in [
        ("ftp://127.0.0.1:1", vec![], vec![]),
        ("127.0.0.1:7700", vec![], vec![]),
        ("https://127.0.0.1:1", vec!["not PEM".to_owned()], vec![]),
        (
            "https://127.0.0.1:1",
            vec![],
            vec!["sha256/short".to_owned()],
        ),
    ] {
        let mut sync = SyncConfig::new(url);
        sync.tls.trusted_roots_pem = roots;
        sync.tls.pinned_spki_sha256 = pins;
        match device
            .client
            .start_sync(
                sync,
                std::sync::Arc::new(tandem_core::StaticToken::new("dev:alice")),
            )
            .await
        {
            Err(error @ Error::InvalidConfig(_)) => {
                assert_eq!(error.code(), "invalid_config");
                let reason = error.reason();
                assert!(!reason.starts_with("invalid_config"), "{reason}");
            }
            other => panic!("{url}: expected invalid_config, got {other:?}"),
        }
        assert!(!device.client.is_syncing(), "{url}: nothing was started");
    }
}

/// The pin of a certificate, in hex.
fn hex_pin(der: &[u8]) -> String {
    let hash =
        tandem_core::sync::tls::spki_sha256(der).unwrap_or_else(|| panic!("not a certificate"));
    hash.iter().map(|b| format!("{b:02x}")).collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_fixture_certificates_the_swift_and_kotlin_tests_use_are_served_and_trusted() {
    let fixtures = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("fixtures/tls");
    let read =
        |name: &str| std::fs::read(fixtures.join(name)).unwrap_or_else(|e| panic!("{name}: {e}"));
    let identity = tandem_server::TlsIdentity {
        cert_chain_pem: read("server.pem"),
        key_pem: read("server-key.pem"),
    };
    let server = TestServer::start(TestServerOptions::dev().with(|c| c.tls = Some(identity))).await;
    let ca = String::from_utf8(read("ca.pem")).unwrap_or_else(|e| panic!("{e}"));
    let device = Device::offline("alice", "phone");
    device
        .start_sync_with(config(&server.https_url(), &[ca]))
        .await;
    device
        .client
        .put(key("t1"), "{}")
        .unwrap_or_else(|e| panic!("{e}"));
    device.settle().await;
}
