// Mirrors android-lib/jvm-test/src/test/kotlin/dev/tandem/LocalClientTest.kt:
// the local client through the generated Swift bindings. Runs on macOS with
// `swift test` after scripts/build-xcframework.sh.

import Foundation
import XCTest

@testable import Tandem

final class LocalClientTests: XCTestCase {
    var client: Client!

    override func setUp() async throws {
        client = try await openClient()
    }

    override func tearDown() {
        client.close()
    }

    func testPutGetAndQueryRoundTripDocumentsAsJSONWithTypedMetadata() throws {
        try client.declareIndex(collection: "tasks", fields: ["done"])
        let milk = try client.put(key: task("t1"), fieldsJson: #"{"title":"milk","done":false}"#)
        _ = try client.put(key: task("t2"), fieldsJson: #"{"title":"eggs","done":true}"#)

        XCTAssertEqual(milk.fieldsJson, #"{"done":false,"title":"milk"}"#)
        XCTAssertEqual(milk.collection, "tasks")
        XCTAssertEqual(milk.space, client.personalSpace())
        XCTAssertNil(milk.version, "the server has not confirmed it")
        XCTAssertTrue(milk.pending)
        XCTAssertEqual(try client.get(key: task("t1")), milk)
        XCTAssertNil(try client.get(key: task("none")))

        let open = try client.query(
            query: Query(collection: "tasks", filters: [Filter(field: "done", op: .eq, value: .bool(value: false))]))
        XCTAssertEqual(open.map(\.id), ["t1"])
        XCTAssertEqual(try client.pendingMutations().map(\.state), [.queued, .queued])
        XCTAssertEqual(try client.status().pending, 2)
    }

    func testCodableHelpersRoundTrip() throws {
        struct Task: Codable, Equatable { var title: String; var done: Bool }
        try client.put(task("t1"), Task(title: "milk", done: false))
        XCTAssertEqual(try client.get(key: task("t1"))?.decode(Task.self), Task(title: "milk", done: false))
        XCTAssertEqual(try client.query(Query(collection: "tasks"), as: Task.self), [Task(title: "milk", done: false)])
    }

    func testBadInputIsATypedInvalidInputWithACodeAndAReason() throws {
        XCTAssertThrowsError(try client.put(key: task("t1"), fieldsJson: "{not json")) { error in
            guard case let TandemError.InvalidInput(code, reason) = error else {
                return XCTFail("expected InvalidInput, got \(error)")
            }
            XCTAssertEqual(code, "invalid_json")
            XCTAssertFalse(reason.isEmpty)
        }
        XCTAssertThrowsError(try client.put(key: task("t1"), fieldsJson: "[1, 2]")) { error in
            guard case TandemError.InvalidInput(code: "not_an_object", reason: _) = error else {
                return XCTFail("expected not_an_object, got \(error)")
            }
        }
        XCTAssertThrowsError(try client.query(query: Query(collection: "tasks", orderBy: "title"))) { error in
            guard case TandemError.InvalidInput(code: "not_indexed", reason: _) = error else {
                return XCTFail("expected not_indexed, got \(error)")
            }
        }
        XCTAssertNil(try client.get(key: task("t1")), "nothing was written")
    }

    func testAQueryObserverFiresAfterAWriteAndStopsAfterCancel() throws {
        let ids = Ids()
        let subscription = try client.observeQuery(query: Query(collection: "tasks"), observer: ids)
        XCTAssertEqual(ids.next(), [], "the current result first")
        _ = try client.put(key: task("t1"), fieldsJson: "{}")
        XCTAssertEqual(ids.next(), ["t1"])
        XCTAssertEqual(client.activeSubscriptions(), 1)

        subscription.cancel()
        XCTAssertTrue(subscription.isCancelled())
        XCTAssertEqual(client.activeSubscriptions(), 0, "Rust saw the cancel")
        _ = try client.put(key: task("t2"), fieldsJson: "{}")
        XCTAssertTrue(ids.none(), "no callback after cancel")
    }

    func testTheStreamEmitsTheCurrentResultThenTheUpdateAndCancelsItsSubscription() async throws {
        _ = try client.put(key: task("t1"), fieldsJson: "{}")
        let stream = try client.observe(Query(collection: "tasks"))
        var iterator = stream.makeAsyncIterator()
        let first = await iterator.next()
        XCTAssertEqual(first?.map(\.id), ["t1"], "the current result")
        XCTAssertEqual(client.activeSubscriptions(), 1)
        _ = try client.put(key: task("t2"), fieldsJson: "{}")
        let second = await iterator.next()
        XCTAssertEqual(second?.map(\.id), ["t1", "t2"], "the update")

        let client = self.client!
        let consumer = Task {
            for await _ in try client.observe(Query(collection: "tasks")) {}
        }
        try await waitUntil { client.activeSubscriptions() == 2 }
        consumer.cancel()
        _ = await consumer.result
        try await waitUntil { client.activeSubscriptions() == 1 }
    }

    func testAClosedClientSaysClosed() throws {
        _ = try client.put(key: task("t1"), fieldsJson: "{}")
        client.close()
        client.close()
        XCTAssertThrowsError(try client.put(key: task("t2"), fieldsJson: "{}")) { error in
            XCTAssertEqual(error as? TandemError, .Closed)
        }
        XCTAssertThrowsError(try client.get(key: task("t1"))) { error in
            XCTAssertEqual(error as? TandemError, .Closed)
        }
    }

    func testAnObserverThatThrowsDoesNotStopTheOthers() throws {
        final class Throwing: QueryObserver {
            struct Bug: Error {}
            func onResult(documents: [Document]) throws { throw Bug() }
        }
        let throwing = try client.observeQuery(query: Query(collection: "tasks"), observer: Throwing())
        let ids = Ids()
        let working = try client.observeQuery(query: Query(collection: "tasks"), observer: ids)
        XCTAssertEqual(ids.next(), [])
        _ = try client.put(key: task("t1"), fieldsJson: "{}")
        XCTAssertEqual(ids.next(), ["t1"], "the other observer still works")
        _ = try client.put(key: task("t2"), fieldsJson: "{}")
        XCTAssertEqual(ids.next(), ["t1", "t2"], "and keeps working")
        throwing.cancel()
        working.cancel()
    }

    func testClosingTheClientWithLiveSubscriptionsIsClean() throws {
        let subscriptions = try (1...3).map { _ in
            try client.observeQuery(query: Query(collection: "tasks"), observer: Ids())
        }
        client.close()
        XCTAssertEqual(client.activeSubscriptions(), 3, "still held by the app")
        subscriptions.forEach { $0.cancel() }
        XCTAssertEqual(client.activeSubscriptions(), 0)
    }
}
