// A real `tandem serve --dev-auth` for the tests, from the binary named by
// TANDEM_CLI (the same build as the library; scripts/swift-test.sh sets it);
// with `tls`, serving https and wss with the certificate of tests/fixtures/tls.
//
// Lifetime: a server never outlives the test that started it, nor the test
// process. `startServer` stops it when the test ends (pass or fail), `deinit`
// stops it if it is dropped earlier, and a watcher covers the case where the
// test process dies before either runs (a crash, a kill, a timeout):
//
//   test process ──lifeline pipe──▶ watcher (/bin/sh) ──SIGTERM──▶ tandem serve
//
// The watcher, a second child of the test process, reads its stdin: a pipe
// whose only writer is the test process. The read ends when the test process
// closes the pipe (`stop`) or ends in any way at all, since the kernel then
// closes its descriptors; the watcher then sends the server SIGTERM (it stops
// gracefully) and SIGKILL if it is still there 10 s later. Foundation's
// Process closes every other descriptor in the children it starts, so no
// other child holds a lifeline open.

import Foundation
import XCTest

import Tandem

#if canImport(Glibc)
import Glibc
#elseif canImport(Darwin)
import Darwin
#endif

/// How a test server is started. New server options (TLS files, other auth)
/// go here, and the matching client settings in `TandemServer.syncConfig`.
struct ServerOptions: Sendable {
    /// The schema file's content: collection policies and field rules.
    var schema = #"{"collections": {}}"#
    /// Whether it serves https/wss (`--tls-cert`, `--tls-key`) with the
    /// test certificate for 127.0.0.1 (`TestTLS`); clients trust it with
    /// the test authority in `trustedRootsPem`.
    var tls = false
    /// More `tandem serve` arguments.
    var extraArguments: [String] = []
}

final class TandemServer: Sendable {
    /// The base URL clients connect to: `https://` with `tls`.
    let url: String
    /// The roots a client trusts this server with: the test authority
    /// when it serves TLS.
    let trustedRootsPem: [String]
    /// The directory holding the database, the schema and the logs.
    let directory: URL
    private let server: ServerProcess

    /// Starts a server and waits until it listens.
    init(_ options: ServerOptions = ServerOptions()) throws {
        guard let cli = ProcessInfo.processInfo.environment["TANDEM_CLI"] else {
            throw XCTSkip("TANDEM_CLI (the path of the tandem binary) is not set")
        }
        guard FileManager.default.isExecutableFile(atPath: cli) else {
            throw HarnessError("no tandem binary at \(cli): build it with cargo build -p tandem-cli")
        }
        directory = try makeTemporaryDirectory("tandem-server")
        let schemaFile = directory.appendingPathComponent("schema.json")
        try options.schema.write(to: schemaFile, atomically: true, encoding: .utf8)
        var tlsArguments: [String] = []
        if options.tls {
            tlsArguments = [
                "--tls-cert", try TestTLS.file("server.pem").path,
                "--tls-key", try TestTLS.file("server-key.pem").path,
            ]
            trustedRootsPem = [try TestTLS.caPEM()]
        } else {
            trustedRootsPem = []
        }
        let out = directory.appendingPathComponent("server.out")
        let log = directory.appendingPathComponent("server.log")
        server = try ServerProcess(
            out: out, log: log,
            command: [
                cli, "serve", "--listen", "127.0.0.1:0",
                "--db", directory.appendingPathComponent("server.db").path,
                "--schema", schemaFile.path, "--dev-auth",
            ] + tlsArguments + options.extraArguments)

        // The first line of the server's output is {"listening": "<addr>", ...}.
        let deadline = Date().addingTimeInterval(startTimeout)
        var firstLine: Substring?
        while firstLine == nil {
            if let text = try? String(contentsOf: out, encoding: .utf8), text.contains("\n") {
                firstLine = text.split(separator: "\n").first
            } else if !server.isRunning || Date() > deadline {
                server.stop()
                let logText = (try? String(contentsOf: log, encoding: .utf8)) ?? ""
                throw HarnessError("tandem serve did not start listening: \(logText)")
            } else {
                Thread.sleep(forTimeInterval: 0.01)
            }
        }
        let object = try? JSONSerialization.jsonObject(with: Data(firstLine!.utf8)) as? [String: Any]
        guard let address = object?["listening"] as? String, object?["tls"] as? Bool == options.tls else {
            server.stop()
            throw HarnessError("unexpected first line from tandem serve: \(firstLine!)")
        }
        url = "\(options.tls ? "https" : "http")://\(address)"
    }

    /// The client side of this server's settings: its URL and, for TLS, the
    /// test authority as a trusted root.
    func syncConfig(platform: String = "swift-test", tuning: SyncTuning? = nil) -> SyncConfig {
        SyncConfig(serverUrl: url, platform: platform, trustedRootsPem: trustedRootsPem, tuning: tuning)
    }

    /// Starts syncing `client` as `dev:<user>` (by default its own user),
    /// with `config` (by default `syncConfig()`), and waits until it has
    /// caught up.
    func connect(_ client: Client, user: String? = nil, config: SyncConfig? = nil) async throws {
        let token = "dev:\(user ?? client.userId())"
        try await client.startSync(config: config ?? syncConfig(), tokenProvider: ClosureTokenProvider { token })
        let outcome = try await client.syncOnce(timeoutMs: syncTimeoutMs)
        XCTAssertEqual(outcome, .caughtUp)
    }

    /// The server's process id.
    var pid: Int32 { server.pid }
    /// Whether the server process is running.
    var isRunning: Bool { server.isRunning }
    /// Closes the lifeline without waiting: what the end of the test
    /// process does.
    func closeLifeline() { server.closeLifeline() }
    /// Stops the server and waits until it has exited. Idempotent.
    func stop() { server.stop() }
}

/// The server's process and its watcher.
private final class ServerProcess: @unchecked Sendable {
    private let server = Process()
    private let watcher = Process()
    private let lifeline: FileHandle
    private let outputs: [FileHandle]
    private let lock = NSLock()
    private var lifelineClosed = false

    /// Waits for the end of its stdin (the lifeline), then stops the server
    /// whose pid is $1: SIGTERM, and SIGKILL if it is still there 10 s later.
    private static let watcherScript = #"""
        server=$1
        while read -r _; do :; done
        kill -TERM "$server" 2>/dev/null
        waited=0
        while kill -0 "$server" 2>/dev/null; do
          waited=$((waited + 1))
          if [ "$waited" -gt 100 ]; then kill -KILL "$server" 2>/dev/null; exit 0; fi
          sleep 0.1
        done
        """#

    /// Runs `command` with its stdout in `out` and its stderr in `log`.
    init(out: URL, log: URL, command: [String]) throws {
        outputs = try [out, log].map { url in
            _ = FileManager.default.createFile(atPath: url.path, contents: nil)
            return try FileHandle(forWritingTo: url)
        }
        server.executableURL = URL(fileURLWithPath: command[0])
        server.arguments = Array(command.dropFirst())
        server.standardInput = FileHandle.nullDevice
        server.standardOutput = outputs[0]
        server.standardError = outputs[1]
        let (server, watcher) = (self.server, self.watcher)
        try Self.withNoSignalsBlocked { try server.run() }

        let pipe = Pipe()
        watcher.executableURL = URL(fileURLWithPath: "/bin/sh")
        watcher.arguments = ["-c", Self.watcherScript, "tandem-serve-watcher", "\(server.processIdentifier)"]
        watcher.standardInput = pipe
        watcher.standardOutput = FileHandle.nullDevice
        watcher.standardError = FileHandle.nullDevice
        lifeline = pipe.fileHandleForWriting
        do {
            try Self.withNoSignalsBlocked { try watcher.run() }
        } catch {
            kill(server.processIdentifier, SIGKILL)
            server.waitUntilExit()
            throw error
        }
    }

    /// Runs `body` with no signal blocked on this thread. A child inherits
    /// the signal mask of the thread that starts it, and the threads that
    /// run Swift tasks (libdispatch's) block nearly every signal: started
    /// from one of them, the server would never see SIGTERM.
    private static func withNoSignalsBlocked<T>(_ body: () throws -> T) rethrows -> T {
        var none = sigset_t()
        var previous = sigset_t()
        sigemptyset(&none)
        pthread_sigmask(SIG_SETMASK, &none, &previous)
        defer { pthread_sigmask(SIG_SETMASK, &previous, nil) }
        return try body()
    }

    var pid: Int32 { server.processIdentifier }
    var isRunning: Bool { server.isRunning }

    func closeLifeline() {
        lock.lock()
        defer { lock.unlock() }
        if !lifelineClosed {
            lifelineClosed = true
            try? lifeline.close()
        }
    }

    /// Closes the lifeline, so the watcher stops the server, and waits for
    /// both to exit; kills whichever takes longer than 15 s.
    func stop() {
        closeLifeline()
        for process in [server, watcher] {
            let deadline = Date().addingTimeInterval(15)
            while process.isRunning && Date() < deadline {
                Thread.sleep(forTimeInterval: 0.01)
            }
            if process.isRunning {
                kill(process.processIdentifier, SIGKILL)
                process.waitUntilExit()
            }
        }
        for output in outputs { try? output.close() }
    }

    deinit { stop() }
}

extension XCTestCase {
    /// Starts a server that is stopped when the test ends.
    func startServer(_ options: ServerOptions = ServerOptions()) throws -> TandemServer {
        let server = try TandemServer(options)
        addTeardownBlock { server.stop() }
        return server
    }

    /// Starts a server with `schema` that is stopped when the test ends.
    func startServer(schema: String) throws -> TandemServer {
        try startServer(ServerOptions(schema: schema))
    }
}
