// Mirrors android-lib/jvm-test/src/test/kotlin/dev/tandem/CoordinationTest.kt
// against a real `tandem serve --dev-auth` (TANDEM_CLI, as SyncTests).

import Foundation
import XCTest

@testable import Tandem

final class CoordinationTests: XCTestCase {
    func testClaimObserveAndReleaseARoleAcrossTwoDevices() async throws {
        let server = try TandemServer()
        let phone = try await openClient(user: "alice", device: "phone")
        let tablet = try await openClient(user: "alice", device: "tablet")
        try await server.connect(phone, user: "alice")
        try await server.connect(tablet, user: "alice")
        var heard = tablet.roleUpdates("auto-responder").makeAsyncIterator()

        let claimed = try await phone.claimRole(role: "auto-responder", priority: 0)
        XCTAssertTrue(claimed.isSelf)
        XCTAssertEqual(claimed.epoch, 1)
        XCTAssertEqual(claimed.holderName, "phone")
        let fence = try XCTUnwrap(phone.currentFence(role: "auto-responder"))
        XCTAssertEqual(fence.epoch, 1)

        // The tablet hears the phone took the role.
        while let role = await heard.next(), role.holderName != "phone" {}
        let second = try await tablet.claimRole(role: "auto-responder", priority: 0)
        XCTAssertEqual(second.holderName, "phone")
        XCTAssertNil(tablet.currentFence(role: "auto-responder"))

        // The phone releases it: the tablet, a candidate, takes over.
        let released = try await phone.releaseRole(role: "auto-responder")
        XCTAssertEqual(released.epoch, 2)
        while let role = await heard.next(), !role.isSelf {}
        XCTAssertEqual(tablet.currentFence(role: "auto-responder")?.epoch, 2)

        // The phone's old epoch no longer works.
        do {
            _ = try await phone.guardFenced(scope: "replies", content: "hello", windowMs: nil, fence: fence)
            XCTFail("expected RoleLost")
        } catch TandemError.RoleLost {
        }
        phone.close()
        tablet.close()
    }

    func testTheGuardAnswersFirstOnceThenDuplicate() async throws {
        let server = try TandemServer()
        var devices: [Client] = []
        for index in 0..<4 {
            let client = try await openClient(user: "bob", device: "device-\(index)")
            try await server.connect(client, user: "bob")
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
        XCTAssertEqual(answers.filter { $0 == .first }.count, 1)
        XCTAssertEqual(answers.filter { $0 == .duplicate }.count, 3)
        let again = try await devices[0].guard(scope: "conversation:1", content: "Thanks, on my way!", windowMs: 5_000)
        XCTAssertEqual(again, .duplicate)
        devices.forEach { $0.close() }
    }

    func testDevicesListEachOther() async throws {
        let server = try TandemServer()
        let phone = try await openClient(user: "carol", device: "phone")
        let laptop = try await openClient(user: "carol", device: "laptop")
        try await server.connect(phone, user: "carol")
        try await server.connect(laptop, user: "carol")
        var lists = laptop.deviceUpdates().makeAsyncIterator()
        var devices: [DeviceInfo] = []
        while let next = await lists.next() {
            devices = next
            if devices.filter(\.online).count == 2 { break }
        }
        XCTAssertEqual(devices.map(\.name), ["laptop", "phone"])
        XCTAssertTrue(devices.first { $0.name == "laptop" }?.isSelf ?? false)
        phone.close()
        laptop.close()
    }
}
