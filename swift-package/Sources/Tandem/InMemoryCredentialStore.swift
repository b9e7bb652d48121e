// A credential store that keeps the device's tokens in memory only.

import Foundation

/// A `CredentialStore` that holds the device's credentials in memory: they
/// never reach the database file or the disk, and they are gone when the
/// process ends. On the next launch the device has none, so it registers
/// again (asking the token provider for the user's token) as a new device.
///
/// For tests, and for apps that prefer registering again on each launch to
/// keeping tokens at rest; apps that keep the device across launches use
/// `KeychainCredentialStore` on Apple platforms. Safe to use from any
/// thread.
public final class InMemoryCredentialStore: CredentialStore, @unchecked Sendable {
    // Guards `credentials`; the engine calls from its own thread while the
    // app may read the value from another.
    private let lock = NSLock()
    private var credentials: Data?

    /// A store holding `credentials` (none by default).
    public init(_ credentials: Data? = nil) {
        self.credentials = credentials
    }

    public func load() -> Data? {
        lock.lock()
        defer { lock.unlock() }
        return credentials
    }

    public func save(credentials: Data) {
        lock.lock()
        defer { lock.unlock() }
        self.credentials = credentials
    }

    public func delete() {
        lock.lock()
        defer { lock.unlock() }
        credentials = nil
    }
}
