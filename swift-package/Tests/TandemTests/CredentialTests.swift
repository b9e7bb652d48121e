// The device's credentials kept by a credential store written in Swift
// (InMemoryCredentialStore, as KeychainCredentialStore would on an Apple
// device): the engine calls it back, the tokens never reach the database
// file, and signing out (`wipe`) removes them with the database and the
// outbox. Mirrors tests/tests/e2e/credentials.rs.

import Foundation
import XCTest

import Tandem

final class CredentialTests: XCTestCase {
    var server: TandemServer!

    override func setUp() async throws {
        server = try startServer()
    }

    func testTokensKeptByASwiftCredentialStoreNeverReachTheDatabaseFile() async throws {
        let store = InMemoryCredentialStore()
        let dir = try makeTemporaryDirectory("tandem-credentials")
        addTeardownBlock { try? FileManager.default.removeItem(at: dir) }
        let client = try await openClient(user: "alice", dataDir: dir, credentialStore: store)
        XCTAssertNil(store.load(), "no credentials before the device registers")

        _ = try client.put(key: task("t1"), fieldsJson: #"{"title":"secret-free"}"#)
        try await server.connect(client)
        let (accessToken, refreshToken) = try tokens(in: store)
        try await client.stopSync()

        let bytes = try databaseBytes(in: dir)
        XCTAssertTrue(bytes.contains("secret-free"), "the check reads the real file")
        XCTAssertFalse(bytes.contains(accessToken), "the access token is in the database file")
        XCTAssertFalse(bytes.contains(refreshToken), "the refresh token is in the database file")

        // The stored credentials are the device's: reopened with the same
        // store, it syncs as the same device without registering again.
        let deviceId = client.deviceId()
        client.close()
        let reopened = try await openClient(user: "alice", dataDir: dir, credentialStore: store)
        XCTAssertEqual(reopened.deviceId(), deviceId)
        _ = try reopened.put(key: task("t2"), fieldsJson: "{}")
        try await server.connect(reopened)
        XCTAssertEqual(try reopened.status().pending, 0)
    }

    func testWipeSignsOutRemovingTheCredentialsTheDatabaseAndTheOutbox() async throws {
        let store = InMemoryCredentialStore()
        let dir = try makeTemporaryDirectory("tandem-wipe")
        addTeardownBlock { try? FileManager.default.removeItem(at: dir) }
        let client = try await openClient(user: "bob", dataDir: dir, credentialStore: store)
        try await server.connect(client)
        try await client.stopSync()
        XCTAssertNotNil(store.load())
        // Three writes that never reach the server.
        for id in ["a", "b", "c"] {
            _ = try client.put(key: task(id), fieldsJson: "{}")
        }
        let oldDeviceId = client.deviceId()

        let unsent = try client.wipe()
        XCTAssertEqual(unsent, 3, "the unsent writes are counted")
        XCTAssertNil(store.load(), "the credentials are gone")
        for name in ["tandem.db", "tandem.db-wal", "tandem.db-shm"] {
            XCTAssertFalse(
                FileManager.default.fileExists(atPath: dir.appendingPathComponent(name).path), "\(name) is left")
        }
        XCTAssertThrowsError(try client.put(key: task("d"), fieldsJson: "{}")) { error in
            XCTAssertEqual(error as? TandemError, .Closed)
        }

        // The directory is a new device now, with nothing in it.
        let fresh = try await openClient(user: "bob", dataDir: dir, credentialStore: store)
        XCTAssertNotEqual(fresh.deviceId(), oldDeviceId)
        XCTAssertEqual(try fresh.query(query: Query(collection: "tasks")), [])
        XCTAssertEqual(try fresh.status().pending, 0)
    }

    /// The access and refresh tokens in the store's value (a JSON object;
    /// opaque to an app, read here to look for them in the file).
    private func tokens(in store: InMemoryCredentialStore) throws -> (access: String, refresh: String) {
        let value = try XCTUnwrap(store.load(), "the store holds no credentials")
        let object = try XCTUnwrap(JSONSerialization.jsonObject(with: value) as? [String: Any])
        let access = try XCTUnwrap(object["access_token"] as? String, "no access_token in \(object.keys)")
        let refresh = try XCTUnwrap(object["refresh_token"] as? String, "no refresh_token in \(object.keys)")
        XCTAssertFalse(access.isEmpty)
        XCTAssertFalse(refresh.isEmpty)
        return (access, refresh)
    }
}
