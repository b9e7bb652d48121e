// Roles, fencing, the duplicate guard and the device registry against a real
// `tandem serve --dev-auth`: mirrors
// android-lib/jvm-test/src/test/kotlin/dev/tandem/CoordinationTest.kt.

import Foundation
import XCTest

import Tandem

final class CoordinationTests: XCTestCase {
    var server: TandemServer!

    override func setUp() async throws {
        server = try startServer()
    }

    func testClaimObserveAndReleaseARoleAcrossTwoDevices() async throws {
        let phone = try await openClient(user: "alice", device: "phone")
        let tablet = try await openClient(user: "alice", device: "tablet")
        try await server.connect(phone)
        try await server.connect(tablet)
        let heard = Collector(tablet.roleUpdates("auto-responder"))

        let claimed = try await phone.claimRole(role: "auto-responder", priority: 0)
        XCTAssertTrue(claimed.isSelf)
        XCTAssertEqual(claimed.epoch, 1)
        XCTAssertEqual(claimed.holderName, "phone")
        let fence = try XCTUnwrap(phone.currentFence(role: "auto-responder"))
        XCTAssertEqual(fence.epoch, 1)

        // The tablet hears the phone took the role.
        let taken = try await heard.next(timeout: syncTimeout) { $0.holderName == "phone" }
        XCTAssertFalse(taken.isSelf)
        let second = try await tablet.claimRole(role: "auto-responder", priority: 0)
        XCTAssertEqual(second.holderName, "phone")
        XCTAssertNil(tablet.currentFence(role: "auto-responder"))

        // The phone releases it: the tablet, a candidate, takes over and its
        // stream says so.
        let released = try await phone.releaseRole(role: "auto-responder")
        XCTAssertEqual(released.epoch, 2)
        let takenOver = try await heard.next(timeout: syncTimeout) { $0.isSelf }
        XCTAssertEqual(takenOver.epoch, 2)
        XCTAssertEqual(tablet.currentFence(role: "auto-responder")?.epoch, 2)

        // The phone's old epoch no longer works.
        let error = await thrownError {
            try await phone.guardFenced(scope: "replies", content: "hello", windowMs: nil, fence: fence)
        }
        guard case TandemError.RoleLost? = error else {
            return XCTFail("expected RoleLost, got \(String(describing: error))")
        }
        await heard.cancel()
        XCTAssertEqual(tablet.activeSubscriptions(), 0)
    }

    func testTheGuardAnswersFirstOnceThenDuplicate() async throws {
        var devices: [Client] = []
        for index in 0..<4 {
            let client = try await openClient(user: "bob", device: "device-\(index)")
            try await server.connect(client)
            devices.append(client)
        }
        let answers = try await withThrowingTaskGroup(of: GuardOutcome.self) { group in
            for client in devices {
                group.addTask {
                    try await client.guard(scope: "conversation:1", content: " Thanks,  on my way! ", windowMs: nil)
                }
            }
            return try await group.reduce(into: []) { $0.append($1) }
        }
        XCTAssertEqual(answers.filter { $0 == .first }.count, 1, "\(answers)")
        XCTAssertEqual(answers.filter { $0 == .duplicate }.count, 3)
        // The same content normalized the same way is a duplicate; other
        // content in the same scope is a first.
        let again = try await devices[0].guard(scope: "conversation:1", content: "Thanks, on my way!", windowMs: 5_000)
        XCTAssertEqual(again, .duplicate)
        let other = try await devices[0].guard(scope: "conversation:1", content: "See you", windowMs: 5_000)
        XCTAssertEqual(other, .first)
    }

    func testAFencedWriteByTheHolderIsAcceptedAndDevicesListEachOther() async throws {
        let phone = try await openClient(user: "carol", device: "phone")
        let laptop = try await openClient(user: "carol", device: "laptop")
        try await server.connect(phone)
        try await server.connect(laptop)
        _ = try await phone.claimRole(role: "responder", priority: 5)
        let fence = try XCTUnwrap(phone.currentFence(role: "responder"))
        _ = try phone.putFenced(key: DocKey(collection: "answers", id: "a1"), fieldsJson: #"{"text":"hi"}"#, fence: fence)
        let outcome = try await phone.syncOnce(timeoutMs: syncTimeoutMs)
        XCTAssertEqual(outcome, .caughtUp)
        XCTAssertEqual(try phone.status().failed, 0)

        let lists = Collector(laptop.deviceUpdates())
        let devices = try await lists.next(timeout: syncTimeout) { $0.filter(\.online).count == 2 }
        XCTAssertEqual(devices.map(\.name), ["laptop", "phone"])
        XCTAssertEqual(devices.first { $0.name == "laptop" }?.isSelf, true)
        XCTAssertEqual(devices.first { $0.name == "phone" }?.platform, "swift-test")
        await lists.cancel()
        XCTAssertEqual(laptop.activeSubscriptions(), 0)
    }
}
