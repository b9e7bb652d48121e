// Kotlin conveniences over the generated bindings (package dev.tandem.ffi):
// queries, documents, the sync status, roles and devices as Flows. Plain Kotlin/JVM (no
// android.* imports), so the JVM test harness compiles and tests them too.
package dev.tandem

import dev.tandem.ffi.Client
import dev.tandem.ffi.DeviceInfo
import dev.tandem.ffi.DevicesObserver
import dev.tandem.ffi.DocKey
import dev.tandem.ffi.Document
import dev.tandem.ffi.DocumentObserver
import dev.tandem.ffi.MutationFailure
import dev.tandem.ffi.Query
import dev.tandem.ffi.QueryObserver
import dev.tandem.ffi.RoleInfo
import dev.tandem.ffi.RoleObserver
import dev.tandem.ffi.StatusObserver
import dev.tandem.ffi.Subscription
import dev.tandem.ffi.SyncStatus
import dev.tandem.ffi.TokenProvider
import kotlinx.coroutines.CoroutineScope
import kotlinx.coroutines.channels.Channel
import kotlinx.coroutines.channels.awaitClose
import kotlinx.coroutines.flow.Flow
import kotlinx.coroutines.flow.SharingStarted
import kotlinx.coroutines.flow.StateFlow
import kotlinx.coroutines.flow.buffer
import kotlinx.coroutines.flow.callbackFlow
import kotlinx.coroutines.flow.stateIn

/**
 * The documents matching [query]: the current result first, then a new list
 * after every commit that changes it. Collecting subscribes; when the
 * collector is cancelled the Rust subscription is cancelled and released.
 * A slow collector gets the latest result, not every intermediate one.
 * A bad query (say, on a field without an index) fails the flow with
 * [dev.tandem.ffi.TandemException.InvalidInput].
 */
fun Client.observe(query: Query): Flow<List<Document>> = callbackFlow {
    val subscription = observeQuery(query, object : QueryObserver {
        override fun onResult(documents: List<Document>) {
            trySend(documents)
        }
    })
    awaitClose { subscription.release() }
}.buffer(Channel.CONFLATED)

/**
 * One document's local view (null while there is none): the current view
 * first, then each change. Cancelling the collector cancels the Rust
 * subscription.
 */
fun Client.observe(key: DocKey): Flow<Document?> = callbackFlow {
    val subscription = observeDocument(key, object : DocumentObserver {
        override fun onDocument(document: Document?) {
            trySend(document)
        }
    })
    awaitClose { subscription.release() }
}.buffer(Channel.CONFLATED)

/**
 * The sync status: the current one first, then each change. Cancelling the
 * collector cancels the Rust subscription. Failed writes are reported to
 * [onMutationFailed], if given.
 */
fun Client.statusUpdates(onMutationFailed: (MutationFailure) -> Unit = {}): Flow<SyncStatus> =
    callbackFlow {
        val subscription = observeStatus(object : StatusObserver {
            override fun onStatus(status: SyncStatus) {
                trySend(status)
            }

            override fun onMutationFailed(failure: MutationFailure) {
                onMutationFailed(failure)
            }
        })
        awaitClose { subscription.release() }
    }.buffer(Channel.CONFLATED)

/**
 * The sync status as a [StateFlow] in [scope], for a view model: it starts
 * with [Client.status] and follows [statusUpdates] while collected (and for
 * five seconds after the last collector goes, so a configuration change
 * does not resubscribe).
 */
fun Client.statusIn(scope: CoroutineScope): StateFlow<SyncStatus> =
    statusUpdates().stateIn(scope, SharingStarted.WhileSubscribed(5_000), status())

/**
 * The state of [role]: the current one if known, then each change of holder
 * or epoch (`isSelf` says whether this device holds it). Cancelling the
 * collector cancels the Rust subscription. Every change is delivered: a
 * holder that lost the role must hear it even if another change follows.
 */
fun Client.roleUpdates(role: String): Flow<RoleInfo> = callbackFlow {
    val subscription = observeRole(role, object : RoleObserver {
        override fun onRole(role: RoleInfo) {
            trySend(role)
        }
    })
    awaitClose { subscription.release() }
}.buffer(Channel.UNLIMITED)

/**
 * The user's devices: the current list if known, then after each change
 * (a device connects, disconnects, is renamed or revoked).
 */
fun Client.deviceUpdates(): Flow<List<DeviceInfo>> = callbackFlow {
    val subscription = observeDevices(object : DevicesObserver {
        override fun onDevices(devices: List<DeviceInfo>) {
            trySend(devices)
        }
    })
    awaitClose { subscription.release() }
}.buffer(Channel.CONFLATED)

/** A [TokenProvider] from a suspending function, e.g. `tokenProvider { auth.freshToken() }`. */
fun tokenProvider(userToken: suspend () -> String): TokenProvider = object : TokenProvider {
    override suspend fun userToken(): String = userToken()
}

/** Cancels the subscription and frees its Rust handle at once, rather than at garbage collection. */
private fun Subscription.release() {
    cancel()
    close()
}
