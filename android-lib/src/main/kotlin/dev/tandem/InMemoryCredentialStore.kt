// A credential store for tests and for apps that keep no tokens between
// launches. Plain Kotlin/JVM, so the JVM test harness compiles and uses it.
package dev.tandem

import dev.tandem.ffi.CredentialStore
import java.util.concurrent.atomic.AtomicReference

/**
 * A [CredentialStore] that keeps the device's credentials in this object
 * only, for [dev.tandem.ffi.Client.open]: they never reach the database
 * file or any other file, and they are gone with the process, so the device
 * registers again (with a user token from the app's token provider) each
 * time it starts with a new store. For tests, and for apps that would
 * rather register at every launch than keep tokens anywhere; an app that
 * keeps them uses `KeystoreCredentialStore`. Safe to call from any thread.
 */
class InMemoryCredentialStore : CredentialStore {
    // Copies in and out: the caller's array is its own to change.
    private val value = AtomicReference<ByteArray?>(null)

    override fun load(): ByteArray? = value.get()?.copyOf()

    override fun save(credentials: ByteArray) = value.set(credentials.copyOf())

    override fun delete() = value.set(null)
}
