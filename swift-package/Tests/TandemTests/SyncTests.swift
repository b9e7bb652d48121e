// Mirrors android-lib/jvm-test/src/test/kotlin/dev/tandem/SyncTest.kt
// against a real `tandem serve --dev-auth`. Needs the tandem binary of the
// same build: TANDEM_CLI=$PWD/target/debug/tandem swift test (skipped
// without it).

import Foundation
import XCTest

@testable import Tandem

/// A `tandem serve --dev-auth` on a free loopback port.
final class TandemServer {
    let process = Process()
    let url: String

    init(schema: String = #"{"collections": {"contacts": {"policy": "manual"}}}"#) throws {
        guard let cli = ProcessInfo.processInfo.environment["TANDEM_CLI"] else {
            throw XCTSkip("TANDEM_CLI (the path of the tandem binary) is not set")
        }
        let dir = FileManager.default.temporaryDirectory.appendingPathComponent("tandem-server-\(UUID().uuidString)")
        try FileManager.default.createDirectory(at: dir, withIntermediateDirectories: true)
        let schemaFile = dir.appendingPathComponent("schema.json")
        try schema.write(to: schemaFile, atomically: true, encoding: .utf8)
        let output = Pipe()
        process.executableURL = URL(fileURLWithPath: cli)
        process.arguments = [
            "serve", "--listen", "127.0.0.1:0", "--db", dir.appendingPathComponent("server.db").path,
            "--schema", schemaFile.path, "--dev-auth",
        ]
        process.standardOutput = output
        process.standardError = FileHandle.nullDevice
        try process.run()
        // The first line is {"listening": "<addr>", ...}.
        var line = Data()
        while true {
            let byte = output.fileHandleForReading.readData(ofLength: 1)
            if byte.isEmpty || byte == Data("\n".utf8) { break }
            line.append(byte)
        }
        let object = try JSONSerialization.jsonObject(with: line) as? [String: Any]
        guard let address = object?["listening"] as? String else {
            throw XCTSkip("unexpected first line from tandem serve")
        }
        url = "http://\(address)"
    }

    func connect(_ client: Client, user: String) async throws {
        try await client.startSync(
            config: SyncConfig(serverUrl: url, platform: "swift-test"),
            tokenProvider: ClosureTokenProvider { "dev:\(user)" })
        let outcome = try await client.syncOnce(timeoutMs: 20_000)
        XCTAssertEqual(outcome, .caughtUp)
    }

    deinit { process.terminate() }
}

final class SyncTests: XCTestCase {
    func testAnOfflineWriteOnOneDeviceReachesTheOtherDevicesStreamAfterSync() async throws {
        let server = try TandemServer()
        let phone = try await openClient(user: "alice", device: "phone")
        let laptop = try await openClient(user: "alice", device: "laptop")
        try await server.connect(laptop, user: "alice")
        var updates = try laptop.observe(Query(collection: "notes")).makeAsyncIterator()
        let initial = await updates.next()
        XCTAssertEqual(initial, [])

        _ = try phone.put(key: DocKey(collection: "notes", id: "n1"), fieldsJson: #"{"text":"written offline"}"#)
        XCTAssertEqual(try phone.status().pending, 1)
        try await server.connect(phone, user: "alice")

        var received: [Document] = []
        while received.isEmpty, let next = await updates.next() { received = next }
        XCTAssertEqual(received.map(\.id), ["n1"])
        XCTAssertFalse(received[0].pending, "confirmed by the server")
        phone.close()
        laptop.close()
    }

    func testATokenTheServerRefusesIsUnauthorized() async throws {
        let server = try TandemServer()
        let client = try await openClient(user: "carol")
        try await client.startSync(
            config: SyncConfig(serverUrl: server.url), tokenProvider: ClosureTokenProvider { "not-a-dev-token" })
        do {
            _ = try await client.spaces()
            XCTFail("expected Unauthorized")
        } catch TandemError.Unauthorized {
        }
        client.close()
    }

    func testTheStatusStreamGoesFromOfflineToOnline() async throws {
        let server = try TandemServer()
        let client = try await openClient(user: "bob")
        var states = client.statusUpdates().makeAsyncIterator()
        let first = await states.next()
        XCTAssertEqual(first?.connection, .offline)
        try await client.startSync(
            config: SyncConfig(serverUrl: server.url), tokenProvider: ClosureTokenProvider { "dev:bob" })
        while let status = await states.next(), status.connection != .online {}
        XCTAssertEqual(try client.status().connection, .online)
        client.close()
    }
}
