// A credential store in the Keychain. Compiled only where the Security
// framework exists (iOS, iPadOS, macOS): scripts/swift-test.sh builds the
// package on Linux, which has no Keychain, so this file is neither compiled
// nor tested there; `InMemoryCredentialStore` takes its place in the tests.

#if canImport(Security)
import Foundation
import Security

/// A `CredentialStore` in the Keychain: the device's credentials are one
/// generic-password item, found by `service` and `account`.
///
/// Give each data directory an account of its own (the user id, or the data
/// directory's name): one item holds the credentials of one device.
///
/// The item is readable after the first unlock following a restart
/// (`kSecAttrAccessibleAfterFirstUnlock`), not only while the device is
/// unlocked: background sync (a background refresh task, a silent push)
/// runs while the screen is locked, and it must read the access token and
/// save the rotated refresh token then. With a stricter class the save
/// would fail while locked and the single-use refresh token would be lost.
///
/// The item lives in the data protection keychain (the iOS one, also on
/// macOS), where the accessibility class applies; on macOS that needs a
/// signed app (any app Xcode signs has the entitlement it takes).
///
/// Failures are `TandemError.Storage` with code `credential_store`.
public final class KeychainCredentialStore: CredentialStore {
    /// The service the items are kept under unless the app names another.
    public static let defaultService = "dev.tandem.credentials"

    /// The Keychain item's service (`kSecAttrService`).
    public let service: String
    /// The Keychain item's account (`kSecAttrAccount`): one per device.
    public let account: String

    public init(account: String, service: String = KeychainCredentialStore.defaultService) {
        self.account = account
        self.service = service
    }

    /// The attributes that find this store's item.
    private var item: [String: Any] {
        [
            kSecClass as String: kSecClassGenericPassword,
            kSecAttrService as String: service,
            kSecAttrAccount as String: account,
            kSecUseDataProtectionKeychain as String: true,
        ]
    }

    public func load() throws -> Data? {
        var query = item
        query[kSecReturnData as String] = true
        query[kSecMatchLimit as String] = kSecMatchLimitOne
        var result: CFTypeRef?
        let status = SecItemCopyMatching(query as CFDictionary, &result)
        switch status {
        case errSecSuccess:
            guard let data = result as? Data else { throw Self.failure("load", errSecInternalError) }
            return data
        case errSecItemNotFound:
            return nil
        default:
            throw Self.failure("load", status)
        }
    }

    public func save(credentials: Data) throws {
        let value: [String: Any] = [
            kSecValueData as String: credentials,
            kSecAttrAccessible as String: kSecAttrAccessibleAfterFirstUnlock,
        ]
        let updated = SecItemUpdate(item as CFDictionary, value as CFDictionary)
        if updated == errSecSuccess { return }
        guard updated == errSecItemNotFound else { throw Self.failure("update", updated) }
        let added = SecItemAdd(item.merging(value) { $1 } as CFDictionary, nil)
        guard added == errSecSuccess else { throw Self.failure("add", added) }
    }

    public func delete() throws {
        let status = SecItemDelete(item as CFDictionary)
        guard status == errSecSuccess || status == errSecItemNotFound else {
            throw Self.failure("delete", status)
        }
    }

    private static func failure(_ operation: String, _ status: OSStatus) -> TandemError {
        let message = SecCopyErrorMessageString(status, nil) as String? ?? "unknown error"
        return .Storage(
            code: "credential_store",
            reason: "Keychain \(operation) failed: \(message) (OSStatus \(status))")
    }
}
#endif
