// The database encrypted at rest with `ClientConfig.encryptionKey`
// (SQLCipher): the files hold no document text, only the key opens them,
// and `changeEncryptionKey` encrypts, re-keys and decrypts a closed one.

import Foundation
import XCTest

import Tandem

final class EncryptionTests: XCTestCase {
    private let secret = #"{"title":"the plans for the surprise party"}"#
    private let secretText = "the plans for the surprise party"

    func testAnEncryptedDatabaseHoldsNoDocumentTextAndOpensOnlyWithItsKey() async throws {
        let key = randomDatabaseKey()
        let dir = try temporaryDirectory("tandem-encrypted")
        let client = try await openClient(user: "alice", dataDir: dir, encryptionKey: key)
        _ = try client.put(key: task("t1"), fieldsJson: secret)
        XCTAssertEqual(try client.status().pending, 1, "waiting in the outbox")
        client.close()
        XCTAssertFalse(try databaseBytes(in: dir).contains(secretText), "document text in the encrypted file")

        // The same write in a plain database is in its file: the check above
        // reads what it should.
        let plainDir = try temporaryDirectory("tandem-plain")
        let plain = try await openClient(user: "alice", dataDir: plainDir)
        _ = try plain.put(key: task("t1"), fieldsJson: secret)
        plain.close()
        XCTAssertTrue(try databaseBytes(in: plainDir).contains(secretText))

        let wrongKeys: [(String, Data?)] = [("another key", randomDatabaseKey()), ("no key", nil)]
        for (what, wrongKey) in wrongKeys {
            let error = await thrownError {
                try await Client.open(config: clientConfig(dataDir: dir, user: "alice", device: "d", encryptionKey: wrongKey))
            }
            guard case let TandemError.InvalidInput(code, _)? = error else {
                XCTFail("\(what): expected InvalidInput, got \(String(describing: error))")
                continue
            }
            XCTAssertEqual(code, "wrong_key", what)
        }

        // Its key opens it with the document and the outbox as they were.
        let reopened = try await openClient(user: "alice", dataDir: dir, encryptionKey: key)
        XCTAssertEqual(try reopened.get(key: task("t1"))?.fieldsJson, secret)
        XCTAssertEqual(try reopened.status().pending, 1)
        XCTAssertEqual(try reopened.failedMutations(), [])
    }

    func testAKeyThatIsNot32BytesIsRefused() async throws {
        let dir = try temporaryDirectory("tandem-short-key")
        let error = await thrownError {
            try await Client.open(config: clientConfig(dataDir: dir, user: "alice", device: "d", encryptionKey: Data(count: 16)))
        }
        guard case let TandemError.InvalidInput(code, _)? = error else {
            return XCTFail("expected InvalidInput, got \(String(describing: error))")
        }
        XCTAssertEqual(code, "invalid_config")
        XCTAssertFalse(FileManager.default.fileExists(atPath: dir.appendingPathComponent("tandem.db").path))
    }

    func testChangeEncryptionKeyEncryptsReKeysAndDecryptsAClosedDatabase() async throws {
        let dir = try temporaryDirectory("tandem-rekey")
        let first = randomDatabaseKey()
        let second = randomDatabaseKey()
        let plain = try await openClient(user: "alice", dataDir: dir)
        _ = try plain.put(key: task("t1"), fieldsJson: secret)
        plain.close()

        try await changeEncryptionKey(dataDir: dir.path, currentKey: nil, newKey: first)
        XCTAssertFalse(try databaseBytes(in: dir).contains(secretText), "encrypted")
        try await assertOpens(dir, with: first, refusing: nil)

        try await changeEncryptionKey(dataDir: dir.path, currentKey: first, newKey: second)
        try await assertOpens(dir, with: second, refusing: first)

        // A wrong current key changes nothing.
        let error = await thrownError {
            try await changeEncryptionKey(dataDir: dir.path, currentKey: first, newKey: nil)
        }
        guard case let TandemError.InvalidInput(code, _)? = error else {
            return XCTFail("expected InvalidInput, got \(String(describing: error))")
        }
        XCTAssertEqual(code, "wrong_key")
        try await assertOpens(dir, with: second, refusing: first)

        try await changeEncryptionKey(dataDir: dir.path, currentKey: second, newKey: nil)
        XCTAssertTrue(try databaseBytes(in: dir).contains(secretText), "plain again")
        try await assertOpens(dir, with: nil, refusing: second)
    }

    /// Checks that the database in `dir` opens with `key`, holding the
    /// document and its pending write, and that `wrongKey` fails with
    /// `wrong_key`.
    private func assertOpens(
        _ dir: URL, with key: Data?, refusing wrongKey: Data?, file: StaticString = #filePath, line: UInt = #line
    ) async throws {
        let config = clientConfig(dataDir: dir, user: "alice", device: "d", encryptionKey: wrongKey)
        let error = await thrownError({ try await Client.open(config: config) }, file: file, line: line)
        guard case let TandemError.InvalidInput(code, _)? = error else {
            return XCTFail("expected InvalidInput, got \(String(describing: error))", file: file, line: line)
        }
        XCTAssertEqual(code, "wrong_key", file: file, line: line)

        let client = try await Client.open(config: clientConfig(dataDir: dir, user: "alice", device: "d", encryptionKey: key))
        defer { client.close() }
        XCTAssertEqual(try client.get(key: task("t1"))?.fieldsJson, secret, file: file, line: line)
        XCTAssertEqual(try client.status().pending, 1, file: file, line: line)
    }

    /// A fresh directory removed when the test ends.
    private func temporaryDirectory(_ prefix: String) throws -> URL {
        let dir = try makeTemporaryDirectory(prefix)
        addTeardownBlock { try? FileManager.default.removeItem(at: dir) }
        return dir
    }
}
