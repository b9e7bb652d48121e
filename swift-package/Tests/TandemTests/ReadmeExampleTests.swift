// The Swift example of README.md, run as written: the lines between the
// markers are the README's, which scripts/swift-test.sh checks (only the
// app's parts, such as `render`, `auth`, the credential store, the database
// key and the private CA, are parameters here).

import Foundation
import XCTest

import Tandem

/// The app's model in the example.
private struct Todo: Codable, Equatable {
    var title: String
    var done: Bool
}

/// The app's sign-in layer in the example.
private struct DevAuth: Sendable {
    let user: String
    func userToken() async throws -> String { "dev:\(user)" }
}

private func showOpenTasks(
    dir: URL, databaseKey: Data, credentials: CredentialStore, serverURL: String, privateCA: String, auth: DevAuth,
    render: @escaping @Sendable ([Todo]) -> Void
) async throws {
    // README: begin Swift example
    let config = ClientConfig(dataDir: dir.path, userId: "alice", deviceName: "Alice's iPhone",
                              encryptionKey: databaseKey)  // 32 random bytes kept in the Keychain; optional
    let client = try await Client.open(config: config, credentialStore: credentials)  // tokens never in the database file
    let sync = SyncConfig(serverUrl: serverURL, trustedRootsPem: [privateCA])  // extra roots: optional
    try await client.startSync(config: sync, tokenProvider: ClosureTokenProvider { try await auth.userToken() })
    try client.declareIndex(collection: "tasks", fields: ["done"])
    try client.put(DocKey(collection: "tasks", id: "t1"), Todo(title: "Buy milk", done: false))
    let openTasks = Query(collection: "tasks", filters: [Filter(field: "done", op: .eq, value: .bool(value: false))])
    for await documents in try client.observe(openTasks) {  // until the task is cancelled
        render(try documents.map { try $0.decode(Todo.self) })
    }
    client.close()
    // README: end Swift example
}

final class ReadmeExampleTests: XCTestCase {
    func testTheReadmeExampleRuns() async throws {
        let server = try startServer(ServerOptions(tls: true))
        let dir = try makeTemporaryDirectory("tandem-readme")
        addTeardownBlock { try? FileManager.default.removeItem(at: dir) }
        let credentials = InMemoryCredentialStore()
        let databaseKey = randomDatabaseKey()
        let privateCA = try TestTLS.caPEM()
        let rendered = Mailbox<[Todo]>()
        let example = Task {
            try await showOpenTasks(
                dir: dir, databaseKey: databaseKey, credentials: credentials, serverURL: server.url,
                privateCA: privateCA, auth: DevAuth(user: "alice")
            ) { rendered.put($0) }
        }

        // The open task is rendered from the local database...
        let shown = try await rendered.next { !$0.isEmpty }
        XCTAssertEqual(shown, [Todo(title: "Buy milk", done: false)])
        // ...and reaches Alice's other devices through the server.
        let laptop = try await openClient(user: "alice", device: "laptop")
        try await server.connect(laptop)
        let onLaptop = Collector(try laptop.observe(Query(collection: "tasks")))
        let synced = try await onLaptop.next(timeout: syncTimeout) { !$0.isEmpty }
        XCTAssertEqual(try synced.map { try $0.decode(Todo.self) }, [Todo(title: "Buy milk", done: false)])
        await onLaptop.cancel()

        // Leaving the screen cancels the task: the loop ends, the client closes.
        example.cancel()
        try await example.value

        // The device's tokens went to the credential store, and the database
        // file is encrypted.
        XCTAssertNotNil(credentials.load())
        XCTAssertFalse(try databaseBytes(in: dir).contains("Buy milk"))
    }
}
