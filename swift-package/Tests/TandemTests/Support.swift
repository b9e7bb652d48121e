import Foundation
import XCTest

@testable import Tandem

/// Opens a local device of `user` in a fresh directory.
func openClient(user: String = "alice", device: String = "swift-test") async throws -> Client {
    let dir = FileManager.default.temporaryDirectory
        .appendingPathComponent("tandem-\(user)-\(UUID().uuidString)")
    return try await Client.open(config: ClientConfig(dataDir: dir.path, userId: user, deviceName: device))
}

func task(_ id: String) -> DocKey { DocKey(collection: "tasks", id: id) }

/// Sends each result's ids to a queue the test reads.
final class Ids: QueryObserver, @unchecked Sendable {
    private let condition = NSCondition()
    private var results: [[String]] = []

    func onResult(documents: [Document]) throws {
        condition.lock()
        results.append(documents.map(\.id))
        condition.signal()
        condition.unlock()
    }

    /// The next result, waiting up to `timeout` seconds.
    func next(timeout: TimeInterval = 10) -> [String]? {
        condition.lock()
        defer { condition.unlock() }
        let deadline = Date().addingTimeInterval(timeout)
        while results.isEmpty {
            if !condition.wait(until: deadline) { return nil }
        }
        return results.removeFirst()
    }

    /// Whether nothing arrives for a short while.
    func none() -> Bool { next(timeout: 0.3) == nil }
}

struct TimedOut: Error {}

/// Polls `condition` until it holds, for up to `timeout` seconds.
func waitUntil(timeout: TimeInterval = 10, _ condition: () -> Bool) async throws {
    let deadline = Date().addingTimeInterval(timeout)
    while !condition() {
        if Date() > deadline { throw TimedOut() }
        try await Task.sleep(nanoseconds: 10_000_000)
    }
}
