//! TLS from a terminal: `tandem serve --tls-cert --tls-key` and `tandem
//! client --ca-cert`, as processes; a plain `http://` server used by a
//! client that has no root certificates at all; server URLs of every
//! accepted form, and a bad one refused at once.
#![allow(clippy::unwrap_used)]

use std::path::{Path, PathBuf};
use std::process::Output;
use std::time::{Duration, Instant};

use serde_json::Value;

use crate::support::Serve;

/// A throwaway CA and a server certificate for 127.0.0.1 it signed, as
/// files.
struct Certificates {
    dir: tempfile::TempDir,
}

impl Certificates {
    fn new() -> Certificates {
        use rcgen::{BasicConstraints, CertificateParams, CertifiedIssuer, IsCa, KeyPair};
        let dir = tempfile::tempdir().unwrap();
        let mut ca = CertificateParams::new(Vec::<String>::new()).unwrap();
        ca.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        let ca = CertifiedIssuer::self_signed(ca, KeyPair::generate().unwrap()).unwrap();
        let key = KeyPair::generate().unwrap();
        let cert = CertificateParams::new(vec!["127.0.0.1".to_owned()])
            .unwrap()
            .signed_by(&key, &ca)
            .unwrap();
        std::fs::write(dir.path().join("ca.pem"), ca.pem()).unwrap();
        std::fs::write(dir.path().join("cert.pem"), cert.pem()).unwrap();
        std::fs::write(dir.path().join("key.pem"), key.serialize_pem()).unwrap();
        Certificates { dir }
    }

    fn path(&self, name: &str) -> PathBuf {
        self.dir.path().join(name)
    }
}

fn client(data: &Path, server: &str, extra: &[&str], command: &[&str]) -> Output {
    crate::support::client(server, data, "cli")
        .args(extra)
        .args(command)
        .output()
        .unwrap()
}

fn stdout_json(out: &Output) -> Value {
    let text = String::from_utf8_lossy(&out.stdout);
    serde_json::from_str(text.lines().next().unwrap_or_default())
        .unwrap_or_else(|e| panic!("{e}: {text:?}"))
}

#[test]
fn a_client_syncs_with_a_tls_server_through_a_ca_given_on_the_command_line() {
    let certs = Certificates::new();
    let (cert, key) = (certs.path("cert.pem"), certs.path("key.pem"));
    let server = Serve::with_args(&[
        "--tls-cert",
        cert.to_str().unwrap(),
        "--tls-key",
        key.to_str().unwrap(),
    ]);
    assert_eq!(server.ready["tls"], true, "{}", server.ready);
    let url = format!("https://{}", server.addr);
    let ca = certs.path("ca.pem");
    let ca = ca.to_str().unwrap();

    let phone = tempfile::tempdir().unwrap();
    let out = client(
        phone.path(),
        &url,
        &["--ca-cert", ca],
        &["put", "tasks", "t1", r#"{"title":"over TLS"}"#],
    );
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let out = client(phone.path(), &url, &["--ca-cert", ca], &["sync"]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );

    // Another device, reading the same server with its wss:// address.
    let laptop = tempfile::tempdir().unwrap();
    let wss = format!("wss://{}/v1/sync", server.addr);
    let out = client(
        laptop.path(),
        &wss,
        &["--ca-cert", ca],
        &["get", "tasks", "t1"],
    );
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert_eq!(stdout_json(&out)["fields"]["title"], "over TLS");

    // Without the CA the same server is not trusted: a tls error, promptly.
    let stranger = tempfile::tempdir().unwrap();
    let started = Instant::now();
    let out = client(stranger.path(), &url, &[], &["sync", "--timeout", "60"]);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success());
    assert!(stderr.contains("error: tls: "), "{stderr}");
    assert!(!stderr.contains("tls: tls"), "prefix repeated: {stderr}");
    assert!(
        started.elapsed() < Duration::from_secs(30),
        "waited for the whole timeout: {stderr}"
    );
}

#[test]
fn a_plain_server_needs_no_root_certificates_on_the_device() {
    let server = Serve::start();
    assert_eq!(server.ready["tls"], false, "{}", server.ready);
    let empty = tempfile::tempdir().unwrap();
    let phone = tempfile::tempdir().unwrap();
    // No CA anywhere the device could look (rustls-native-certs reads
    // these), as on a machine without ca-certificates.
    let out = crate::support::client(&format!("ws://{}", server.addr), phone.path(), "cli")
        .env("SSL_CERT_FILE", empty.path().join("none.pem"))
        .env("SSL_CERT_DIR", empty.path())
        .args(["put", "tasks", "t1", "{}"])
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let out = client(
        phone.path(),
        &format!("http://{}", server.addr),
        &[],
        &["sync"],
    );
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
}

#[test]
fn a_server_url_that_cannot_work_is_refused_at_once() {
    let phone = tempfile::tempdir().unwrap();
    for url in ["ftp://127.0.0.1:1", "127.0.0.1:1", "http://"] {
        let started = Instant::now();
        let out = client(phone.path(), url, &[], &["sync"]);
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert!(!out.status.success(), "{url}");
        let line = stderr.lines().last().unwrap_or_default();
        assert!(
            line.starts_with("error: invalid_config: "),
            "{url}: {stderr}"
        );
        assert_eq!(line.matches("invalid_config").count(), 1, "{line}");
        // Not after trying to reach it for the sync's 30 s (a loaded
        // machine may take a few seconds to start and end the process).
        assert!(
            started.elapsed() < Duration::from_secs(15),
            "{url}: not at once"
        );
    }
}
