// What the tests share: clients in fresh directories that are closed and
// removed when the test ends, waiting with deadlines, collectors for the
// AsyncStreams, and the TLS fixtures (tests/fixtures/tls). Servers are in
// TandemServer.swift.
//
// New client settings (say, a credential store) go into `clientConfig` and
// `openClient`, so every test gets them the same way.

import Foundation
import XCTest

import Tandem

/// A bounded sync's time limit in the tests: generous for a loaded CI machine.
let syncTimeoutMs: UInt64 = 20_000
/// How long a test waits for something that needs the server.
let syncTimeout = TimeInterval(syncTimeoutMs / 1000)
/// How long a test waits for something that must happen.
let deliveryTimeout: TimeInterval = 10
/// How long a test waits for something that must not happen.
let silence: TimeInterval = 0.3
/// How long a server may take to start listening.
let startTimeout: TimeInterval = 20

/// A failure of the test harness itself (not of the code under test).
struct HarnessError: Error, CustomStringConvertible {
    let description: String
    init(_ description: String) { self.description = description }
}

/// Waiting for something timed out.
struct TimedOut: Error, CustomStringConvertible {
    let description: String
    init(_ what: String) { description = "timed out waiting for \(what)" }
}

/// A new empty directory under the temporary directory.
func makeTemporaryDirectory(_ prefix: String) throws -> URL {
    let dir = FileManager.default.temporaryDirectory
        .appendingPathComponent("\(prefix)-\(UUID().uuidString)")
    try FileManager.default.createDirectory(at: dir, withIntermediateDirectories: true)
    return dir
}

func task(_ id: String) -> DocKey { DocKey(collection: "tasks", id: id) }

/// The configuration the tests open clients with.
func clientConfig(
    dataDir: URL, user: String, device: String, encryptionKey: Data? = nil,
    cacheLimitBytes: UInt64? = nil, evictableCollections: [String] = []
) -> ClientConfig {
    ClientConfig(
        dataDir: dataDir.path, userId: user, deviceName: device, cacheLimitBytes: cacheLimitBytes,
        evictableCollections: evictableCollections, encryptionKey: encryptionKey)
}

/// A new random 32-byte database key.
func randomDatabaseKey() -> Data {
    var generator = SystemRandomNumberGenerator()
    return Data((0..<32).map { _ in UInt8.random(in: .min ... .max, using: &generator) })
}

/// Every byte of the device's database files in `dataDir` (the database
/// and its write-ahead log), to check what reaches the disk.
func databaseBytes(in dataDir: URL) throws -> Data {
    var bytes = Data()
    for name in ["tandem.db", "tandem.db-wal"] {
        if let content = FileManager.default.contents(atPath: dataDir.appendingPathComponent(name).path) {
            bytes.append(content)
        }
    }
    guard !bytes.isEmpty else { throw HarnessError("no database file in \(dataDir.path)") }
    return bytes
}

extension Data {
    /// Whether the UTF-8 bytes of `text` occur in this data.
    func contains(_ text: String) -> Bool { range(of: Data(text.utf8)) != nil }
}

/// The directory of the shared test fixtures, tests/fixtures in the
/// repository: TANDEM_FIXTURES names it when set (scripts/swift-test.sh
/// mounts it into the root the tests run in), else it is found from this
/// file's place in the checkout (swift test run in swift-package/).
func fixturesDirectory() throws -> URL {
    let directory: URL
    if let path = ProcessInfo.processInfo.environment["TANDEM_FIXTURES"] {
        directory = URL(fileURLWithPath: path)
    } else {
        // swift-package/Tests/TandemTests/Support/Support.swift
        directory = URL(fileURLWithPath: #filePath)
            .deletingLastPathComponent().deletingLastPathComponent().deletingLastPathComponent()
            .deletingLastPathComponent().deletingLastPathComponent()
            .appendingPathComponent("tests/fixtures")
    }
    guard FileManager.default.fileExists(atPath: directory.appendingPathComponent("tls/ca.pem").path) else {
        throw HarnessError("no test fixtures in \(directory.path): set TANDEM_FIXTURES to the repository's tests/fixtures")
    }
    return directory
}

/// The test certificate authority and the server certificate it signed
/// for 127.0.0.1 and localhost (tests/fixtures/tls, made by its make.sh).
enum TestTLS {
    static func file(_ name: String) throws -> URL {
        try fixturesDirectory().appendingPathComponent("tls").appendingPathComponent(name)
    }
    /// The authority's certificate, PEM: what `trustedRootsPem` takes.
    static func caPEM() throws -> String { try String(contentsOf: file("ca.pem"), encoding: .utf8) }
    /// The pin of server.pem's public key, computed once with
    ///   openssl x509 -in server.pem -pubkey -noout | openssl pkey -pubin -outform der |
    ///     openssl dgst -sha256 -binary | base64
    /// (make.sh makes a new key: compute it again after running it).
    static let serverPin = "sha256/8maLTL8HJ0vse7DLt0BShUiwzOxW8i/2n95hp5e2qDk="
}

extension XCTestCase {
    /// Opens a device of `user` in a fresh directory (or in `dataDir`, to
    /// reopen one), with the credential store and database key given. It
    /// is closed, and a fresh directory removed, when the test ends.
    func openClient(
        user: String = "alice", device: String = "swift-test", dataDir: URL? = nil,
        credentialStore: CredentialStore? = nil, encryptionKey: Data? = nil,
        cacheLimitBytes: UInt64? = nil, evictableCollections: [String] = []
    ) async throws -> Client {
        let dir = try dataDir ?? makeTemporaryDirectory("tandem-\(user)")
        let config = clientConfig(
            dataDir: dir, user: user, device: device, encryptionKey: encryptionKey,
            cacheLimitBytes: cacheLimitBytes, evictableCollections: evictableCollections)
        let client = try await Client.open(config: config, credentialStore: credentialStore)
        let removeDir = dataDir == nil
        addTeardownBlock {
            client.close()
            if removeDir { try? FileManager.default.removeItem(at: dir) }
        }
        return client
    }
}

/// Polls `condition` until it holds, for up to `timeout` seconds.
func waitUntil(
    _ what: String = "a condition", timeout: TimeInterval = deliveryTimeout, _ condition: () throws -> Bool
) async throws {
    let deadline = Date().addingTimeInterval(timeout)
    while try !condition() {
        if Date() > deadline { throw TimedOut(what) }
        try await Task.sleep(nanoseconds: 10_000_000)
    }
}

/// Runs `body` and returns the error it throws (failing the test if it
/// throws none).
func thrownError<T>(
    _ body: () async throws -> T, file: StaticString = #filePath, line: UInt = #line
) async -> Error? {
    do {
        _ = try await body()
        XCTFail("expected an error", file: file, line: line)
        return nil
    } catch {
        return error
    }
}

/// A queue that callbacks on other threads put into and a synchronous
/// test takes from, with a deadline.
final class BlockingQueue<Element>: @unchecked Sendable {
    private let condition = NSCondition()
    private var items: [Element] = []

    func put(_ item: Element) {
        condition.lock()
        items.append(item)
        condition.signal()
        condition.unlock()
    }

    /// The next item, waiting up to `timeout` seconds.
    func next(timeout: TimeInterval = deliveryTimeout) -> Element? {
        condition.lock()
        defer { condition.unlock() }
        let deadline = Date().addingTimeInterval(timeout)
        while items.isEmpty {
            if !condition.wait(until: deadline) { return nil }
        }
        return items.removeFirst()
    }

    /// Whether nothing arrives for a short while.
    func none() -> Bool { next(timeout: silence) == nil }
}

/// A query observer that puts each result's ids in a queue the test reads
/// (for the observer interfaces the bindings generate; the AsyncStreams
/// have `Collector`).
final class Ids: QueryObserver, @unchecked Sendable {
    private let queue = BlockingQueue<[String]>()
    func onResult(documents: [Document]) throws { queue.put(documents.map(\.id)) }
    func next(timeout: TimeInterval = deliveryTimeout) -> [String]? { queue.next(timeout: timeout) }
    func none() -> Bool { queue.none() }
}

/// Consumes an AsyncStream in a task of its own, as an app's `for await`
/// loop would, and keeps what arrives, so that a test can wait for an
/// element with a deadline (a stream's own `next()` waits forever) and
/// cancel the consuming task. Released, it cancels the task.
final class Collector<Element: Sendable>: Sendable {
    private let mailbox = Mailbox<Element>()
    private let consumer: Task<Void, Never>

    init(_ stream: AsyncStream<Element>) {
        consumer = Task { [mailbox] in
            for await element in stream { mailbox.put(element) }
            mailbox.end()
        }
    }

    /// The next element not taken yet, waiting up to `timeout` seconds.
    func next(timeout: TimeInterval = deliveryTimeout) async throws -> Element {
        try await mailbox.next(timeout: timeout)
    }

    /// Takes elements until one matches, waiting up to `timeout` seconds.
    func next(
        timeout: TimeInterval = deliveryTimeout, where matches: (Element) throws -> Bool
    ) async throws -> Element {
        try await mailbox.next(timeout: timeout, where: matches)
    }

    /// Whether nothing arrives for a short while.
    func none() async throws -> Bool { try await mailbox.none() }

    /// Whether the stream has finished (its loop ended).
    var isFinished: Bool { mailbox.isEnded }

    /// Waits until the stream finishes by itself.
    func waitUntilFinished(timeout: TimeInterval = deliveryTimeout) async throws {
        try await waitUntil("the end of the stream", timeout: timeout) { isFinished }
    }

    /// Cancels the consuming task, as an app does when it leaves a screen,
    /// and waits for its loop to end.
    func cancel() async {
        consumer.cancel()
        await consumer.value
    }

    deinit { consumer.cancel() }
}

/// Values that callbacks or tasks put in and an async test takes out, with
/// a deadline. It polls rather than blocks: a blocked thread of the
/// cooperative pool (two on a two-core machine) could starve the very task
/// the test waits for.
final class Mailbox<Element>: @unchecked Sendable {
    private let lock = NSLock()
    private var items: [Element] = []
    private var ended = false

    private func locked<T>(_ body: () throws -> T) rethrows -> T {
        lock.lock()
        defer { lock.unlock() }
        return try body()
    }

    func put(_ item: Element) { locked { items.append(item) } }
    /// No more items will come.
    func end() { locked { ended = true } }
    var isEmpty: Bool { locked { items.isEmpty } }
    var isEnded: Bool { locked { ended } }
    /// Everything put so far, without taking it.
    var all: [Element] { locked { items } }

    /// The next item not taken yet, waiting up to `timeout` seconds.
    func next(timeout: TimeInterval = deliveryTimeout) async throws -> Element {
        let deadline = Date().addingTimeInterval(timeout)
        while true {
            let (item, isEnded): (Element?, Bool) = locked {
                (items.isEmpty ? nil : items.removeFirst(), ended)
            }
            if let item { return item }
            if isEnded { throw HarnessError("nothing more will come") }
            if Date() > deadline { throw TimedOut("the next item") }
            try await Task.sleep(nanoseconds: 10_000_000)
        }
    }

    /// Takes items until one matches, waiting up to `timeout` seconds.
    func next(
        timeout: TimeInterval = deliveryTimeout, where matches: (Element) throws -> Bool
    ) async throws -> Element {
        let deadline = Date().addingTimeInterval(timeout)
        while true {
            let item = try await next(timeout: max(0, deadline.timeIntervalSinceNow))
            if try matches(item) { return item }
        }
    }

    /// Whether nothing arrives for a short while.
    func none() async throws -> Bool {
        try await Task.sleep(nanoseconds: UInt64(silence * 1_000_000_000))
        return isEmpty
    }
}
