// Two and more devices syncing through a real `tandem serve --dev-auth`
// (TANDEM_CLI): mirrors android-lib/jvm-test/src/test/kotlin/dev/tandem/SyncTest.kt,
// with the Swift conveniences (streams, ClosureTokenProvider) on the way.

import Foundation
import XCTest

import Tandem

final class SyncTests: XCTestCase {
    var server: TandemServer!

    override func setUp() async throws {
        server = try startServer(schema: #"""
            {"collections": {
              "contacts": {"policy": "manual"},
              "notes": {"fields": {"text": {"type": "string", "max_length": 20}}}
            }}
            """#)
    }

    func testAnOfflineWriteOnOneDeviceReachesTheOtherDevicesStreamAfterSync() async throws {
        let phone = try await openClient(user: "alice", device: "phone")
        let laptop = try await openClient(user: "alice", device: "laptop")
        try await server.connect(laptop)
        let notes = Collector(try laptop.observe(Query(collection: "notes")))
        let initial = try await notes.next()
        XCTAssertEqual(initial, [])

        // Written before the phone has ever synced: it waits in the outbox.
        _ = try phone.put(key: DocKey(collection: "notes", id: "n1"), fieldsJson: #"{"text":"written offline"}"#)
        XCTAssertEqual(try phone.status().pending, 1)
        try await server.connect(phone)
        XCTAssertEqual(try phone.status().pending, 0)

        let received = try await notes.next(timeout: syncTimeout) { !$0.isEmpty }
        XCTAssertEqual(received.map(\.id), ["n1"])
        XCTAssertEqual(received[0].fieldsJson, #"{"text":"written offline"}"#)
        XCTAssertNotNil(received[0].version, "confirmed by the server")
        XCTAssertFalse(received[0].pending)

        await notes.cancel()
        XCTAssertEqual(laptop.activeSubscriptions(), 0)
    }

    func testTheStatusStreamGoesFromOfflineToOnlineAndBack() async throws {
        let client = try await openClient(user: "bob")
        let statuses = Collector(client.statusUpdates())
        let first = try await statuses.next()
        XCTAssertEqual(first.connection, .offline)
        try await client.startSync(config: server.syncConfig(), tokenProvider: ClosureTokenProvider { "dev:bob" })
        _ = try await statuses.next(timeout: syncTimeout) { $0.connection == .online }
        XCTAssertEqual(try client.status().connection, .online)

        client.setNetworkAvailable(available: false)
        _ = try await statuses.next(timeout: syncTimeout) { $0.connection == .offline }
        await statuses.cancel()
        XCTAssertEqual(client.activeSubscriptions(), 0)
    }

    func testATokenTheServerRefusesIsUnauthorized() async throws {
        let client = try await openClient(user: "carol")
        try await client.startSync(
            config: server.syncConfig(), tokenProvider: ClosureTokenProvider { "not-a-dev-token" })
        let error = await thrownError { try await client.spaces() }
        guard case TandemError.Unauthorized? = error else {
            return XCTFail("expected Unauthorized, got \(String(describing: error))")
        }
    }

    func testATokenClosureThatSignsTheUserOutIsUnauthorizedWithItsReason() async throws {
        let client = try await openClient(user: "dave")
        try await client.startSync(
            config: server.syncConfig(),
            tokenProvider: ClosureTokenProvider { throw TandemError.Unauthorized(reason: "signed out") })
        let error = await thrownError { try await client.spaces() }
        guard case let TandemError.Unauthorized(reason)? = error else {
            return XCTFail("expected Unauthorized, got \(String(describing: error))")
        }
        XCTAssertTrue(reason.contains("signed out"), reason)
    }

    func testATokenClosureMayAwaitAndIsAskedForTheUserToken() async throws {
        let client = try await openClient(user: "heidi")
        let calls = Mailbox<String>()
        let provider = ClosureTokenProvider {
            // As an app's auth layer would: suspend (a refresh, a keychain read).
            try await Task.sleep(nanoseconds: 1_000_000)
            calls.put("asked")
            return "dev:heidi"
        }
        try await client.startSync(config: server.syncConfig(), tokenProvider: provider)
        let outcome = try await client.syncOnce(timeoutMs: syncTimeoutMs)
        XCTAssertEqual(outcome, .caughtUp)
        XCTAssertFalse(calls.all.isEmpty, "registering the device asked for the user's token")
        let spaces = try await client.spaces()
        XCTAssertEqual(spaces.map(\.space), [client.personalSpace()])
    }

    func testAConflictHandlerWrittenInSwiftIsCalledAndItsChoiceWins() async throws {
        let contact = DocKey(collection: "contacts", id: "c1")
        let first = try await openClient(user: "erin", device: "first")
        let second = try await openClient(user: "erin", device: "second")
        try await server.connect(first)
        try await server.connect(second)
        _ = try first.put(key: contact, fieldsJson: #"{"name":"Ann","phone":"1"}"#)
        var outcome = try await first.syncOnce(timeoutMs: syncTimeoutMs)
        XCTAssertEqual(outcome, .caughtUp)
        outcome = try await second.syncOnce(timeoutMs: syncTimeoutMs)
        XCTAssertEqual(outcome, .caughtUp)
        // The second device may have been settled before the first one's
        // change reached it live: wait for the change, not for a sync.
        let onSecond = Collector(try second.observe(contact))
        _ = try await onSecond.next(timeout: syncTimeout) {
            $0?.fieldsJson == #"{"name":"Ann","phone":"1"}"#
        }
        await onSecond.cancel()

        // The second device goes offline and edits the name while the first
        // changes the phone number.
        second.setNetworkAvailable(available: false)
        _ = try first.patch(key: contact, fieldsJson: #"{"phone":"2"}"#)
        outcome = try await first.syncOnce(timeoutMs: syncTimeoutMs)
        XCTAssertEqual(outcome, .caughtUp)
        _ = try second.patch(key: contact, fieldsJson: #"{"name":"Anna"}"#)

        let handler = MergingConflictHandler(merged: #"{"name":"Anna (merged)","phone":"2"}"#)
        second.setConflictHandler(handler: handler)
        second.setNetworkAvailable(available: true)
        let deadline = Date().addingTimeInterval(syncTimeout)
        while try await second.syncOnce(timeoutMs: syncTimeoutMs) != .caughtUp {
            if Date() > deadline { throw TimedOut("the second device to catch up") }
        }

        let conflicts = handler.conflicts.all
        XCTAssertEqual(conflicts.count, 1, "the handler was called once")
        XCTAssertEqual(conflicts.first?.policy, "manual")
        // The local view is the pending edit on the confirmed state the
        // device had when the server refused the write: rebased on the
        // first device's change if that arrived first (the two race on
        // reconnecting), else on the state the edit was made on.
        let local = try XCTUnwrap(conflicts.first?.localJson)
        XCTAssertTrue(
            [#"{"name":"Anna","phone":"2"}"#, #"{"name":"Anna","phone":"1"}"#].contains(local), local)
        XCTAssertEqual(conflicts.first?.remoteJson, #"{"name":"Ann","phone":"2"}"#)
        XCTAssertEqual(try second.get(key: contact)?.fieldsJson, #"{"name":"Anna (merged)","phone":"2"}"#)
        XCTAssertEqual(try second.conflicts(limit: 10).first?.winner, "merged")

        let onFirst = Collector(try first.observe(contact))
        _ = try await onFirst.next(timeout: syncTimeout) {
            $0?.fieldsJson == #"{"name":"Anna (merged)","phone":"2"}"#
        }
        await onFirst.cancel()
    }

    func testAWriteTheServerRejectsReachesTheStatusStreamsFailureCallback() async throws {
        let client = try await openClient(user: "ivan")
        let failures = Mailbox<MutationFailure>()
        let statuses = Collector(client.statusUpdates(onMutationFailed: { failures.put($0) }))
        _ = try await statuses.next()
        // The schema allows at most 20 characters.
        _ = try client.put(
            key: DocKey(collection: "notes", id: "n1"), fieldsJson: #"{"text":"far too long for the rule"}"#)
        try await client.startSync(config: server.syncConfig(), tokenProvider: ClosureTokenProvider { "dev:ivan" })

        let failure = try await failures.next(timeout: syncTimeout)
        XCTAssertEqual(failure.collection, "notes")
        XCTAssertEqual(failure.docId, "n1")
        XCTAssertFalse(failure.reason.isEmpty)
        _ = try await statuses.next(timeout: syncTimeout) { $0.failed == 1 }
        let failed = try client.failedMutations()
        XCTAssertEqual(failed.map(\.mutationId), [failure.mutationId])

        XCTAssertTrue(try client.discardMutation(mutationId: failure.mutationId))
        XCTAssertEqual(try client.status().failed, 0)
        await statuses.cancel()
    }

    func testStatusCallbacksComeFromTheEnginesThreadAndMayCallBackIntoTheClient() async throws {
        let client = try await openClient(user: "frank")
        let observer = PendingCounter(client: client)
        let subscription = try client.observeStatus(observer: observer)
        _ = try client.put(key: DocKey(collection: "notes", id: "n1"), fieldsJson: "{}")
        try await server.connect(client)
        XCTAssertFalse(observer.pendingSeen.all.isEmpty)
        XCTAssertEqual(try client.status().pending, 0)
        subscription.cancel()
    }

    func testClosingASyncingClientWithLiveStreamsIsClean() async throws {
        let client = try await openClient(user: "grace")
        try await server.connect(client)
        let streams = try (1...3).map { _ in Collector(try client.observe(Query(collection: "notes"))) }
        let statuses = Collector(client.statusUpdates())
        try await waitUntil("four subscriptions") { client.activeSubscriptions() == 4 }

        client.close()
        XCTAssertThrowsError(try client.put(key: DocKey(collection: "notes", id: "n1"), fieldsJson: "{}")) { error in
            XCTAssertEqual(error as? TandemError, .Closed)
        }
        for stream in streams { await stream.cancel() }
        await statuses.cancel()
        XCTAssertEqual(client.activeSubscriptions(), 0)
        XCTAssertFalse(client.isSyncing())
    }
}

/// Records each conflict and answers with one merged document.
private final class MergingConflictHandler: ConflictHandler {
    let conflicts = Mailbox<Conflict>()
    let merged: String
    init(merged: String) { self.merged = merged }

    func resolve(conflict: Conflict) throws -> Resolution {
        conflicts.put(conflict)
        return .merged(fieldsJson: merged)
    }
}

/// Reads the client's pending count from inside each status callback.
private final class PendingCounter: StatusObserver {
    let client: Client
    let pendingSeen = Mailbox<UInt64>()
    init(client: Client) { self.client = client }

    func onStatus(status: SyncStatus) throws {
        // Re-entering the client from the engine's callback must not deadlock.
        pendingSeen.put(try client.status().pending)
    }

    func onMutationFailed(failure: MutationFailure) throws {}
}
