// The local client through the generated Swift bindings (no server):
// mirrors android-lib/jvm-test/src/test/kotlin/dev/tandem/LocalClientTest.kt.

import Foundation
import XCTest

import Tandem

final class LocalClientTests: XCTestCase {
    var client: Client!

    override func setUp() async throws {
        client = try await openClient()
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

    func testPatchChangesOnlyTheGivenFieldsAndDeleteLeavesATombstone() throws {
        _ = try client.put(key: task("t1"), fieldsJson: #"{"title":"milk","done":false}"#)
        let patched = try client.patch(key: task("t1"), fieldsJson: #"{"done":true}"#)
        XCTAssertEqual(patched.fieldsJson, #"{"done":true,"title":"milk"}"#)

        let deleted = try client.delete(key: task("t1"))
        XCTAssertTrue(deleted.deleted)
        XCTAssertEqual(try client.get(key: task("t1"))?.deleted, true, "the local view is a tombstone")
        XCTAssertEqual(try client.query(query: Query(collection: "tasks")), [], "queries skip tombstones")
        XCTAssertEqual(try client.pendingMutations().map(\.operation), ["put", "patch", "delete"])
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
        XCTAssertEqual(try client.pendingMutations(), [])
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
        XCTAssertThrowsError(try client.observeQuery(query: Query(collection: "tasks"), observer: Ids())) { error in
            XCTAssertEqual(error as? TandemError, .Closed)
        }
    }

    func testACallbackThatThrowsDoesNotCrashRustAndTheFailureReachesTheLogger() throws {
        let logged = LogRecords()
        setLogger(logger: logged, maxLevel: .info)

        let throwing = try client.observeQuery(query: Query(collection: "tasks"), observer: ThrowingObserver())
        let ids = Ids()
        let working = try client.observeQuery(query: Query(collection: "tasks"), observer: ids)
        XCTAssertEqual(ids.next(), [])
        _ = try client.put(key: task("t1"), fieldsJson: "{}")
        XCTAssertEqual(ids.next(), ["t1"], "the other observer still works")
        _ = try client.put(key: task("t2"), fieldsJson: "{}")
        XCTAssertEqual(ids.next(), ["t1", "t2"], "and keeps working")
        XCTAssertTrue(
            logged.warnings.contains {
                $0.contains("a query observer failed") && $0.contains(ThrowingObserver.Bug().description)
            },
            "logged: \(logged.warnings)")
        throwing.cancel()
        working.cancel()
    }

    func testAnObserverMayCallBackIntoTheClientAndCancelItselfWithoutDeadlock() throws {
        let observer = ReenteringObserver(client: client)
        let subscription = try client.observeQuery(query: Query(collection: "tasks"), observer: observer)
        observer.subscription = subscription
        XCTAssertEqual(observer.reads.next(), ["0"], "it read the status from its callback")
        _ = try client.put(key: task("t1"), fieldsJson: "{}")
        XCTAssertEqual(observer.reads.next(), ["1", "found t1", "cancelled"])
        _ = try client.put(key: task("t2"), fieldsJson: "{}")
        XCTAssertTrue(observer.reads.none(), "no callback after it cancelled itself")
        XCTAssertEqual(client.activeSubscriptions(), 0)
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

    func testReopeningTheDataDirectoryKeepsDocumentsAndTheOutbox() async throws {
        let dir = try makeTemporaryDirectory("tandem-reopen")
        addTeardownBlock { try? FileManager.default.removeItem(at: dir) }
        let first = try await openClient(device: "phone", dataDir: dir)
        _ = try first.put(key: task("t1"), fieldsJson: #"{"title":"milk"}"#)
        let deviceId = first.deviceId()
        first.close()

        let again = try await openClient(device: "phone", dataDir: dir)
        XCTAssertEqual(again.deviceId(), deviceId, "the same device")
        XCTAssertEqual(try again.get(key: task("t1"))?.fieldsJson, #"{"title":"milk"}"#)
        XCTAssertEqual(try again.status().pending, 1, "the write still waits in the outbox")
    }
}

/// An app's observer with a bug: it throws.
private final class ThrowingObserver: QueryObserver {
    struct Bug: Error, CustomStringConvertible {
        var description: String { "a bug in the app's observer" }
    }
    func onResult(documents: [Document]) throws { throw Bug() }
}

/// Keeps the messages of warnings and errors.
private final class LogRecords: Logger, @unchecked Sendable {
    private let lock = NSLock()
    private var messages: [String] = []

    func log(level: LogLevel, target: String, message: String) throws {
        guard level == .warn || level == .error else { return }
        lock.lock()
        messages.append(message)
        lock.unlock()
    }

    var warnings: [String] {
        lock.lock()
        defer { lock.unlock() }
        return messages
    }
}

/// Reads through the client from its own callback, then cancels its own
/// subscription once it sees a document. Each callback's reads go to
/// `reads` as one list.
private final class ReenteringObserver: QueryObserver, @unchecked Sendable {
    let client: Client
    let reads = BlockingQueue<[String]>()
    private let lock = NSLock()
    private var _subscription: Subscription?
    var subscription: Subscription? {
        get { lock.lock(); defer { lock.unlock() }; return _subscription }
        set { lock.lock(); _subscription = newValue; lock.unlock() }
    }

    init(client: Client) { self.client = client }

    func onResult(documents: [Document]) throws {
        var seen = ["\(try client.status().pending)"]
        if let first = documents.first {
            if try client.get(key: task(first.id)) != nil { seen.append("found \(first.id)") }
            // The first callback can run before `subscription` is set; a
            // document arrives only after the test wrote one, by then it is.
            subscription?.cancel()
            seen.append("cancelled")
        }
        reads.put(seen)
    }
}
