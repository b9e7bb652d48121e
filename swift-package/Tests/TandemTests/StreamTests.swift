// The AsyncStream conveniences of Sources/Tandem/Streams.swift on a local
// client: what each stream emits, and that its Rust subscription ends with
// the consuming task, with the stream, or with the client. The Kotlin suite
// tests its Flows the same way (LocalClientTest.kt). The streams fed by a
// server (status online, roles, devices) are in SyncTests and
// CoordinationTests.

import Foundation
import XCTest

import Tandem

final class StreamTests: XCTestCase {
    var client: Client!

    override func setUp() async throws {
        client = try await openClient()
    }

    func testTheQueryStreamEmitsTheCurrentResultThenTheUpdateAndEndsWithItsTask() async throws {
        _ = try client.put(key: task("t1"), fieldsJson: "{}")
        let results = Collector(try client.observe(Query(collection: "tasks")))
        let current = try await results.next()
        XCTAssertEqual(current.map(\.id), ["t1"], "the current result")
        XCTAssertEqual(client.activeSubscriptions(), 1)
        _ = try client.put(key: task("t2"), fieldsJson: "{}")
        let update = try await results.next()
        XCTAssertEqual(update.map(\.id), ["t1", "t2"], "the update")

        await results.cancel()
        XCTAssertEqual(client.activeSubscriptions(), 0, "cancelling the task cancelled the Rust subscription")
        _ = try client.put(key: task("t3"), fieldsJson: "{}")
        let nothing = try await results.none()
        XCTAssertTrue(nothing, "nothing after the task went")
    }

    func testAQueryStreamNobodyIteratesEndsItsSubscriptionWhenReleased() async throws {
        do {
            let stream = try client.observe(Query(collection: "tasks"))
            XCTAssertEqual(client.activeSubscriptions(), 1)
            withExtendedLifetime(stream) {}
        }
        try await waitUntil("the subscription to end") { client.activeSubscriptions() == 0 }
    }

    func testABadQueryThrowsAtOnceInsteadOfReturningAStream() throws {
        XCTAssertThrowsError(try client.observe(Query(collection: "tasks", orderBy: "title"))) { error in
            guard case TandemError.InvalidInput(code: "not_indexed", reason: _) = error else {
                return XCTFail("expected not_indexed, got \(error)")
            }
        }
        XCTAssertEqual(client.activeSubscriptions(), 0)
    }

    func testAnOrderedFilteredQueryStreamFollowsTheIndex() async throws {
        try client.declareIndex(collection: "tasks", fields: ["done", "rank"])
        let open = Query(
            collection: "tasks", filters: [Filter(field: "done", op: .eq, value: .bool(value: false))],
            orderBy: "rank")
        let results = Collector(try client.observe(open))
        let empty = try await results.next()
        XCTAssertEqual(empty, [])
        _ = try client.put(key: task("b"), fieldsJson: #"{"done":false,"rank":2}"#)
        _ = try client.put(key: task("a"), fieldsJson: #"{"done":false,"rank":1}"#)
        _ = try client.put(key: task("c"), fieldsJson: #"{"done":true,"rank":0}"#)
        let both = try await results.next { $0.count == 2 }
        XCTAssertEqual(both.map(\.id), ["a", "b"], "open tasks by rank")
        _ = try client.patch(key: task("a"), fieldsJson: #"{"done":true}"#)
        let left = try await results.next { $0.count == 1 }
        XCTAssertEqual(left.map(\.id), ["b"])
        await results.cancel()
    }

    func testADocumentStreamFollowsOneDocumentToItsDelete() async throws {
        let views = Collector(try client.observe(task("t1")))
        let before = try await views.next()
        XCTAssertNil(before, "no document yet")
        _ = try client.put(key: task("t1"), fieldsJson: #"{"title":"milk"}"#)
        let written = try await views.next()
        XCTAssertEqual(written?.fieldsJson, #"{"title":"milk"}"#)
        _ = try client.delete(key: task("t1"))
        let deleted = try await views.next()
        XCTAssertEqual(deleted?.deleted, true, "a tombstone")

        await views.cancel()
        XCTAssertEqual(client.activeSubscriptions(), 0)
    }

    func testTheStatusStreamStartsWithTheCurrentStatusAndEndsWithItsTask() async throws {
        _ = try client.put(key: task("t1"), fieldsJson: "{}")
        let statuses = Collector(client.statusUpdates())
        let first = try await statuses.next()
        XCTAssertEqual(first.connection, .offline, "never synced")
        XCTAssertEqual(first.pending, 1, "the write waiting in the outbox")
        XCTAssertEqual(client.activeSubscriptions(), 1)

        await statuses.cancel()
        XCTAssertEqual(client.activeSubscriptions(), 0)
    }

    func testRoleAndDeviceStreamsWaitForNewsAndEndWithTheirTask() async throws {
        // Without a server, nothing is known yet: the streams wait.
        let roles = Collector(client.roleUpdates("auto-responder"))
        let devices = Collector(client.deviceUpdates())
        try await waitUntil("both subscriptions") { client.activeSubscriptions() == 2 }
        let noRole = try await roles.none()
        XCTAssertTrue(noRole)
        XCTAssertFalse(roles.isFinished)
        XCTAssertFalse(devices.isFinished)

        await roles.cancel()
        await devices.cancel()
        XCTAssertEqual(client.activeSubscriptions(), 0)
    }

    func testTheStreamsOfAClosedClientFinishOrThrowClosed() async throws {
        client.close()
        XCTAssertThrowsError(try client.observe(Query(collection: "tasks"))) { error in
            XCTAssertEqual(error as? TandemError, .Closed)
        }
        XCTAssertThrowsError(try client.observe(task("t1"))) { error in
            XCTAssertEqual(error as? TandemError, .Closed)
        }
        // The streams that cannot throw finish at once instead.
        try await Collector(client.statusUpdates()).waitUntilFinished()
        try await Collector(client.roleUpdates("auto-responder")).waitUntilFinished()
        try await Collector(client.deviceUpdates()).waitUntilFinished()
        XCTAssertEqual(client.activeSubscriptions(), 0)
    }

    func testClosingTheClientLeavesItsStreamsToTheirTasks() async throws {
        let results = Collector(try client.observe(Query(collection: "tasks")))
        _ = try await results.next()
        client.close()
        XCTAssertEqual(client.activeSubscriptions(), 1, "still held by the app's task")
        await results.cancel()
        XCTAssertEqual(client.activeSubscriptions(), 0)
    }
}
