//! The device database encrypted at rest (SQLCipher): the file holds none
//! of the documents' text, a wrong key is refused and changes nothing, the
//! right key gives back every document and the outbox, and the key can be
//! changed (plain to encrypted, to another key, back to plain).

use sha2::{Digest, Sha256};
use tandem_core::{Client, DatabaseKey, DocKey, Error};
use tandem_e2e::{Device, TestServer, contains_text};

fn key(byte: u8) -> DatabaseKey {
    DatabaseKey::new(&[byte; 32]).unwrap_or_else(|e| panic!("{e}"))
}

fn doc(id: &str) -> DocKey {
    DocKey {
        space: None,
        collection: "notes".into(),
        id: id.into(),
    }
}

/// The text every test writes, to look for in the file.
const SECRET: &str = "meet-at-the-old-lighthouse";

fn write_notes(device: &Device, n: usize) {
    for i in 0..n {
        device
            .client
            .put(
                doc(&format!("n{i}")),
                &format!(r#"{{"text":"{SECRET} #{i}"}}"#),
            )
            .unwrap_or_else(|e| panic!("{e}"));
    }
}

fn open_error(device: &Device, key: Option<DatabaseKey>) -> Error {
    let mut config = tandem_core::ClientConfig::new(
        device.dir().to_str().unwrap_or_else(|| panic!("path")),
        "alice",
        "phone",
    );
    config.encryption_key = key;
    match Client::open(config) {
        Ok(_) => panic!("the database opened"),
        Err(e) => e,
    }
}

#[test]
fn an_encrypted_database_holds_none_of_the_documents_text() {
    let plain = Device::offline("alice", "phone");
    write_notes(&plain, 20);
    assert!(
        contains_text(&plain.database_bytes(), SECRET),
        "a plain database holds the text, so the check can fail"
    );

    let encrypted = Device::offline_with("alice", "phone", |c| c.encryption_key = Some(key(7)));
    write_notes(&encrypted, 20);
    let bytes = encrypted.database_bytes();
    assert!(bytes.len() > 4096, "the database was written");
    assert!(
        !contains_text(&bytes, SECRET),
        "a document's text is readable"
    );
    assert!(
        !contains_text(&bytes, "notes"),
        "a collection name is readable"
    );
    assert!(
        !bytes.starts_with(b"SQLite format 3"),
        "the header is plain"
    );
    let reopened = encrypted.reopen_with(|c| c.encryption_key = Some(key(7)));
    assert!(!contains_text(&reopened.database_bytes(), SECRET));
}

#[test]
fn a_wrong_key_or_no_key_is_refused_and_changes_nothing() {
    let device = Device::offline_with("alice", "phone", |c| c.encryption_key = Some(key(1)));
    write_notes(&device, 5);
    let dir_device = device.reopen_with(|c| c.encryption_key = Some(key(1)));
    dir_device.client.close();
    let before =
        Sha256::digest(std::fs::read(dir_device.dir().join("tandem.db")).unwrap_or_default());

    for (given, says) in [
        (Some(key(2)), "encrypted with another key"),
        (None, "open it with its key"),
    ] {
        match open_error(&dir_device, given) {
            Error::WrongKey(message) => assert!(message.contains(says), "{message}"),
            other => panic!("expected wrong_key, got {other:?}"),
        }
    }
    let after =
        Sha256::digest(std::fs::read(dir_device.dir().join("tandem.db")).unwrap_or_default());
    assert_eq!(before, after, "a refused open changed the file");
    assert!(
        !dir_device.dir().join("tandem.db-wal").exists()
            || std::fs::metadata(dir_device.dir().join("tandem.db-wal")).map_or(0, |m| m.len())
                == 0,
        "a refused open wrote a WAL"
    );

    // A plain database opened with a key says so.
    let plain = Device::offline("alice", "phone");
    write_notes(&plain, 1);
    plain.client.close();
    match open_error(&plain, Some(key(3))) {
        Error::WrongKey(message) => assert!(message.contains("not encrypted"), "{message}"),
        other => panic!("expected wrong_key, got {other:?}"),
    }
    assert!(matches!(
        DatabaseKey::new(&[0u8; 16]),
        Err(Error::InvalidConfig(_))
    ));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_right_key_gives_back_every_document_and_the_outbox() {
    let device = Device::offline_with("alice", "phone", |c| c.encryption_key = Some(key(9)));
    write_notes(&device, 50);
    let device = device.reopen_with(|c| c.encryption_key = Some(key(9)));
    assert_eq!(device.docs(None, "notes").len(), 50);
    let status = device.client.status().unwrap_or_else(|e| panic!("{e}"));
    assert_eq!(status.pending, 50, "the outbox survived");

    // And the outbox still syncs.
    let server = TestServer::dev().await;
    device.start_sync(&server.http_url()).await;
    device.settle().await;
    let on_server =
        tandem_e2e::server_docs(&server.http_url(), "alice", "personal:alice", "notes").await;
    assert_eq!(on_server.len(), 50);
}

#[test]
fn the_key_can_be_changed_from_plain_to_a_key_to_another_and_back() {
    let device = Device::offline("alice", "phone");
    write_notes(&device, 10);
    device.client.close();
    let dir = device
        .dir()
        .to_str()
        .unwrap_or_else(|| panic!("path"))
        .to_owned();

    // Plain to encrypted, to another key, back to plain: each time the old
    // key stops working and the documents are all there.
    let steps = [
        (None, Some(key(4))),
        (Some(key(4)), Some(key(5))),
        (Some(key(5)), None),
    ];
    for (current, new) in steps {
        // A wrong current key changes nothing.
        let wrong = Some(key(99));
        assert!(matches!(
            Client::change_encryption_key(&dir, wrong, new.clone()),
            Err(Error::WrongKey(_))
        ));
        Client::change_encryption_key(&dir, current.clone(), new.clone())
            .unwrap_or_else(|e| panic!("change key: {e}"));
        if current.is_some() {
            assert!(matches!(
                open_error(&device, current.clone()),
                Error::WrongKey(_)
            ));
        }
        let mut config = tandem_core::ClientConfig::new(&dir, "alice", "phone");
        config.encryption_key = new.clone();
        let client = Client::open(config).unwrap_or_else(|e| panic!("open after rekey: {e}"));
        assert_eq!(
            client
                .query(tandem_core::Query::new("notes"))
                .unwrap_or_else(|e| panic!("{e}"))
                .len(),
            10
        );
        assert_eq!(
            client.status().unwrap_or_else(|e| panic!("{e}")).pending,
            10
        );
        client.close();
        assert!(!device.dir().join("tandem.db.rekey").exists());
    }
    let plain = std::fs::read(device.dir().join("tandem.db")).unwrap_or_default();
    assert!(plain.starts_with(b"SQLite format 3"), "plain again");
}
