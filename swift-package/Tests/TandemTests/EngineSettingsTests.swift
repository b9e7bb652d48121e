// The engine's settings an app may change: `SyncTuning` (its defaults are
// the engine's) and the cache budget that `enforceCacheLimit` applies.

import Foundation
import XCTest

import Tandem

final class EngineSettingsTests: XCTestCase {
    func testSyncTuningsDefaultsAreTheEnginesDefaults() {
        XCTAssertEqual(SyncTuning(), defaultSyncTuning())
    }

    func testDevicesSyncWithACustomTuning() async throws {
        let server = try startServer()
        let tuning = SyncTuning(
            reconnectInitialMs: 50, reconnectMaxMs: 2_000, maxAttempts: 3, pingAfterMs: 5_000, maxBatch: 1)
        XCTAssertNotEqual(tuning, defaultSyncTuning())
        let phone = try await openClient(user: "alice", device: "phone")
        let laptop = try await openClient(user: "alice", device: "laptop")
        for id in ["t1", "t2", "t3"] {
            _ = try phone.put(key: task(id), fieldsJson: "{}")
        }
        // One mutation per batch: three batches.
        try await server.connect(phone, config: server.syncConfig(tuning: tuning))
        XCTAssertEqual(try phone.status().pending, 0)
        try await server.connect(laptop, config: server.syncConfig(tuning: tuning))
        let onLaptop = Collector(try laptop.observe(Query(collection: "tasks")))
        let tasks = try await onLaptop.next(timeout: syncTimeout) { $0.count == 3 }
        XCTAssertEqual(tasks.map(\.id).sorted(), ["t1", "t2", "t3"])
        await onLaptop.cancel()
    }

    func testEnforceCacheLimitEvictsConfirmedDocumentsThatFetchGetsBack() async throws {
        let server = try startServer()
        let photos = (0..<10).map { DocKey(collection: "photos", id: "p\($0)") }
        let writer = try await openClient(user: "alice", device: "camera")
        for photo in photos {
            _ = try writer.put(key: photo, fieldsJson: #"{"caption":"\#(photo.id)"}"#)
        }
        try await server.connect(writer)

        // A device that has every photo, confirmed by the server.
        let dir = try makeTemporaryDirectory("tandem-cache")
        addTeardownBlock { try? FileManager.default.removeItem(at: dir) }
        let reader = try await openClient(user: "alice", device: "reader", dataDir: dir)
        try await server.connect(reader)
        try await waitUntil("every photo on the reader", timeout: syncTimeout) {
            try reader.query(query: Query(collection: "photos")).count == photos.count
        }
        try await reader.stopSync()
        reader.close()

        // Reopened with a budget nothing fits in: every photo goes.
        let limited = try await openClient(
            user: "alice", device: "reader", dataDir: dir, cacheLimitBytes: 1, evictableCollections: ["photos"])
        XCTAssertEqual(try limited.enforceCacheLimit(), UInt64(photos.count))
        XCTAssertEqual(try limited.query(query: Query(collection: "photos")), [])
        XCTAssertThrowsError(try limited.get(key: photos[0])) { error in
            guard case TandemError.Network? = error as? TandemError else {
                return XCTFail("expected Network (only the server has it), got \(error)")
            }
        }

        try await server.connect(limited)
        let fetched = try await limited.fetch(key: photos[0])
        XCTAssertEqual(fetched?.fieldsJson, #"{"caption":"p0"}"#)
    }
}
