// The test harness's own promise (Support/TandemServer.swift): a server
// never outlives its test or the test process.

import Foundation
import XCTest

import Tandem

#if canImport(Glibc)
import Glibc
#elseif canImport(Darwin)
import Darwin
#endif

final class ServerHarnessTests: XCTestCase {
    func testAStoppedServerIsGoneAndRefusesClients() async throws {
        let server = try startServer()
        let client = try await openClient(user: "alice")
        try await server.connect(client)
        client.close()

        server.stop()
        XCTAssertFalse(server.isRunning)
        XCTAssertEqual(kill(server.pid, 0), -1, "no process \(server.pid)")
        server.stop()  // a second stop (and the one at teardown) does nothing

        let late = try await openClient(user: "bob")
        try await late.startSync(config: server.syncConfig(), tokenProvider: ClosureTokenProvider { "dev:bob" })
        let error = await thrownError { try await late.spaces() }
        guard case TandemError.Network? = error else {
            return XCTFail("expected Network, got \(String(describing: error))")
        }
    }

    func testTheServerStopsWhenItsLifelineCloses() async throws {
        // What happens when the test process ends without stopping it (a
        // crash, a kill): the kernel closes the lifeline, and the watcher
        // stops the server.
        let server = try startServer()
        server.closeLifeline()
        try await waitUntil("the server to stop", timeout: 15) { !server.isRunning }
    }
}
