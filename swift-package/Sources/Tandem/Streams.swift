// Swift conveniences over the generated bindings (Generated/Tandem.swift):
// queries, documents, the sync status, roles and devices as AsyncStreams.
//
// Swift task cancellation does not reach Rust, so each stream holds its
// Subscription and cancels it when the stream terminates (the consuming
// task is cancelled, the loop breaks, or the stream is released).

import Foundation

extension Client {
    /// The documents matching `query`: the current result first, then a new
    /// array after every commit that changes it. A slow consumer gets the
    /// latest result, not every intermediate one.
    ///
    /// Throws `TandemError.InvalidInput` at once for a bad query (say, on a
    /// field without an index).
    public func observe(_ query: Query) throws -> AsyncStream<[Document]> {
        let (stream, continuation) = AsyncStream.makeStream(
            of: [Document].self, bufferingPolicy: .bufferingNewest(1))
        let subscription = try observeQuery(
            query: query, observer: QueryStreamObserver(continuation))
        continuation.onTermination = { _ in subscription.cancel() }
        return stream
    }

    /// One document's local view (nil while there is none): the current
    /// view first, then each change.
    public func observe(_ key: DocKey) throws -> AsyncStream<Document?> {
        let (stream, continuation) = AsyncStream.makeStream(
            of: Document?.self, bufferingPolicy: .bufferingNewest(1))
        let subscription = try observeDocument(
            key: key, observer: DocumentStreamObserver(continuation))
        continuation.onTermination = { _ in subscription.cancel() }
        return stream
    }

    /// The sync status: the current one first, then each change. Failed
    /// writes are reported to `onMutationFailed`. If the client is closed
    /// the stream finishes at once.
    public func statusUpdates(
        onMutationFailed: @escaping @Sendable (MutationFailure) -> Void = { _ in }
    ) -> AsyncStream<SyncStatus> {
        let (stream, continuation) = AsyncStream.makeStream(
            of: SyncStatus.self, bufferingPolicy: .bufferingNewest(1))
        do {
            let subscription = try observeStatus(
                observer: StatusStreamObserver(continuation, onMutationFailed: onMutationFailed))
            continuation.onTermination = { _ in subscription.cancel() }
        } catch {
            continuation.finish()
        }
        return stream
    }
}

extension Client {
    /// The state of `role`: the current one if known, then each change of
    /// holder or epoch (`isSelf` says whether this device holds it). Every
    /// change is delivered: a holder that lost the role must hear it even
    /// if another change follows. If the client is closed the stream
    /// finishes at once.
    public func roleUpdates(_ role: String) -> AsyncStream<RoleInfo> {
        let (stream, continuation) = AsyncStream.makeStream(
            of: RoleInfo.self, bufferingPolicy: .unbounded)
        do {
            let subscription = try observeRole(
                role: role, observer: RoleStreamObserver(continuation))
            continuation.onTermination = { _ in subscription.cancel() }
        } catch {
            continuation.finish()
        }
        return stream
    }

    /// The user's devices: the current list if known, then after each
    /// change (a device connects, disconnects, is renamed or revoked).
    public func deviceUpdates() -> AsyncStream<[DeviceInfo]> {
        let (stream, continuation) = AsyncStream.makeStream(
            of: [DeviceInfo].self, bufferingPolicy: .bufferingNewest(1))
        do {
            let subscription = try observeDevices(observer: DevicesStreamObserver(continuation))
            continuation.onTermination = { _ in subscription.cancel() }
        } catch {
            continuation.finish()
        }
        return stream
    }
}

private final class QueryStreamObserver: QueryObserver {
    let continuation: AsyncStream<[Document]>.Continuation
    init(_ continuation: AsyncStream<[Document]>.Continuation) { self.continuation = continuation }
    func onResult(documents: [Document]) throws { continuation.yield(documents) }
}

private final class DocumentStreamObserver: DocumentObserver {
    let continuation: AsyncStream<Document?>.Continuation
    init(_ continuation: AsyncStream<Document?>.Continuation) { self.continuation = continuation }
    func onDocument(document: Document?) throws { continuation.yield(document) }
}

private final class StatusStreamObserver: StatusObserver {
    let continuation: AsyncStream<SyncStatus>.Continuation
    let onFailure: @Sendable (MutationFailure) -> Void
    init(
        _ continuation: AsyncStream<SyncStatus>.Continuation,
        onMutationFailed: @escaping @Sendable (MutationFailure) -> Void
    ) {
        self.continuation = continuation
        self.onFailure = onMutationFailed
    }
    func onStatus(status: SyncStatus) throws { continuation.yield(status) }
    func onMutationFailed(failure: MutationFailure) throws { onFailure(failure) }
}

/// A `TokenProvider` from an async closure:
/// `ClosureTokenProvider { try await auth.freshUserToken() }`.
public final class ClosureTokenProvider: TokenProvider {
    private let fetch: @Sendable () async throws -> String
    public init(_ fetch: @escaping @Sendable () async throws -> String) { self.fetch = fetch }
    public func userToken() async throws -> String { try await fetch() }
}

private final class RoleStreamObserver: RoleObserver {
    let continuation: AsyncStream<RoleInfo>.Continuation
    init(_ continuation: AsyncStream<RoleInfo>.Continuation) { self.continuation = continuation }
    func onRole(role: RoleInfo) throws { continuation.yield(role) }
}

private final class DevicesStreamObserver: DevicesObserver {
    let continuation: AsyncStream<[DeviceInfo]>.Continuation
    init(_ continuation: AsyncStream<[DeviceInfo]>.Continuation) { self.continuation = continuation }
    func onDevices(devices: [DeviceInfo]) throws { continuation.yield(devices) }
}
