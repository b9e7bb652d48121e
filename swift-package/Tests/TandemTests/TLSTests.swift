// Syncing with a `tandem serve --tls-cert --tls-key` that serves the test
// certificate of tests/fixtures/tls: trusted through `trustedRootsPem` and
// pinned through `pinnedSpkiSha256`, or refused as `TandemError.Tls` and a
// `.tls` kind in the status; bad settings fail `startSync` at once.

import Foundation
import XCTest

import Tandem

final class TLSTests: XCTestCase {
    var server: TandemServer!

    override func setUp() async throws {
        server = try startServer(ServerOptions(tls: true))
    }

    func testTwoDevicesTrustingThePrivateAuthoritySyncOverHttpsAndWss() async throws {
        XCTAssertTrue(server.url.hasPrefix("https://"), server.url)
        let phone = try await openClient(user: "alice", device: "phone")
        let laptop = try await openClient(user: "alice", device: "laptop")
        try await server.connect(phone)
        try await server.connect(laptop)
        let onLaptop = Collector(try laptop.observe(Query(collection: "tasks")))
        let onPhone = Collector(try phone.observe(Query(collection: "tasks")))

        _ = try phone.put(key: task("from-phone"), fieldsJson: #"{"title":"written on the phone"}"#)
        _ = try laptop.put(key: task("from-laptop"), fieldsJson: #"{"title":"written on the laptop"}"#)

        // Each device sees both writes, confirmed by the server.
        for stream in [onLaptop, onPhone] {
            let both = try await stream.next(timeout: syncTimeout) {
                $0.count == 2 && $0.allSatisfy { !$0.pending }
            }
            XCTAssertEqual(both.map(\.id).sorted(), ["from-laptop", "from-phone"])
            await stream.cancel()
        }
        XCTAssertEqual(try phone.status().connection, .online)
        XCTAssertNil(try phone.status().lastError)
    }

    func testAServerSignedByAnAuthorityTheDeviceDoesNotTrustIsATlsError() async throws {
        let client = try await openClient(user: "bob")
        // No trusted roots: the platform's trust alone, which does not know
        // the test authority.
        try await client.startSync(
            config: SyncConfig(serverUrl: server.url), tokenProvider: ClosureTokenProvider { "dev:bob" })
        _ = try client.put(key: task("t1"), fieldsJson: "{}")

        // A trust failure ends the bounded sync with its reason, not with a
        // timeout.
        let error = await thrownError { try await client.syncOnce(timeoutMs: syncTimeoutMs) }
        guard case let TandemError.Tls(reason)? = error else {
            return XCTFail("expected Tls, got \(String(describing: error))")
        }
        XCTAssertTrue(reason.contains("trusted"), reason)
        let status = try client.status()
        XCTAssertEqual(status.lastError?.kind, .tls)
        XCTAssertEqual(status.lastError?.message.isEmpty, false)
        XCTAssertEqual(status.pending, 1, "the write is kept for later")
    }

    func testThePinOfTheServersKeyIsAcceptedInBase64AndHex() async throws {
        let base64 = try XCTUnwrap(TestTLS.serverPin.split(separator: "/", maxSplits: 1).last)
        let digest = try XCTUnwrap(Data(base64Encoded: String(base64)))
        XCTAssertEqual(digest.count, 32)
        let hex = digest.map { String(format: "%02x", $0) }.joined()

        for (device, pin) in [("base64", TestTLS.serverPin), ("hex", hex)] {
            let client = try await openClient(user: "carol", device: device)
            let config = SyncConfig(
                serverUrl: server.url, trustedRootsPem: server.trustedRootsPem, pinnedSpkiSha256: [pin])
            _ = try client.put(key: task(device), fieldsJson: "{}")
            try await server.connect(client, config: config)
            XCTAssertEqual(try client.status().pending, 0, "\(device): the write reached the server")
        }
    }

    func testAServerWhoseKeyIsNotPinnedIsATlsErrorEvenWhenItsAuthorityIsTrusted() async throws {
        let client = try await openClient(user: "dave")
        // Well-formed, but the hash of no key the server has.
        let otherPin = "sha256/" + Data(repeating: 7, count: 32).base64EncodedString()
        let config = SyncConfig(
            serverUrl: server.url, trustedRootsPem: server.trustedRootsPem, pinnedSpkiSha256: [otherPin])
        try await client.startSync(config: config, tokenProvider: ClosureTokenProvider { "dev:dave" })

        let error = await thrownError { try await client.syncOnce(timeoutMs: syncTimeoutMs) }
        guard case let TandemError.Tls(reason)? = error else {
            return XCTFail("expected Tls, got \(String(describing: error))")
        }
        XCTAssertTrue(reason.contains("pinned"), reason)
        XCTAssertEqual(try client.status().lastError?.kind, .tls)
    }

    func testABadServerURLOrTLSSettingFailsStartSyncAtOnceWithInvalidConfig() async throws {
        let client = try await openClient(user: "erin")
        let badConfigs = [
            SyncConfig(serverUrl: "ftp://127.0.0.1:1"),
            SyncConfig(serverUrl: "127.0.0.1:7700"),
            SyncConfig(serverUrl: server.url, trustedRootsPem: ["not PEM"]),
            SyncConfig(serverUrl: server.url, pinnedSpkiSha256: ["sha256/short"]),
        ]
        for config in badConfigs {
            let error = await thrownError {
                try await client.startSync(config: config, tokenProvider: ClosureTokenProvider { "dev:erin" })
            }
            guard case let TandemError.InvalidInput(code, reason)? = error else {
                XCTFail("\(config): expected InvalidInput, got \(String(describing: error))")
                continue
            }
            XCTAssertEqual(code, "invalid_config", "\(config)")
            XCTAssertFalse(reason.isEmpty)
            XCTAssertFalse(client.isSyncing(), "\(config): nothing was started")
        }
    }
}
