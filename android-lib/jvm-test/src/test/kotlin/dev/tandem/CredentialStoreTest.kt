package dev.tandem

import dev.tandem.ffi.DocKey
import dev.tandem.ffi.SyncOutcome
import dev.tandem.ffi.TandemException
import kotlinx.coroutines.flow.first
import kotlinx.coroutines.runBlocking
import kotlinx.coroutines.withTimeout
import java.io.File
import kotlin.test.AfterTest
import kotlin.test.Test
import kotlin.test.assertEquals
import kotlin.test.assertFailsWith
import kotlin.test.assertFalse
import kotlin.test.assertNotEquals
import kotlin.test.assertNotNull
import kotlin.test.assertNull
import kotlin.test.assertTrue
import kotlin.test.fail

/**
 * A device's tokens kept by a [dev.tandem.ffi.CredentialStore] written in
 * Kotlin (here [InMemoryCredentialStore]; on Android KeystoreCredentialStore)
 * instead of its database, and signing out with `wipe`.
 */
class CredentialStoreTest {
    private val server = TandemServer()

    @AfterTest
    fun stopServer() = server.close()

    @Test
    fun `with a credential store the tokens are in the store and never in the database file`() = runBlocking {
        val store = InMemoryCredentialStore()
        val dir = tempDir("tandem-store-")
        val client = openClient("store-alice", dataDir = dir, credentialStore = store)
        client.put(DocKey("notes", "n1"), """{"text":"written with a store"}""")
        server.connect(client)
        assertEquals(0uL, client.status().pending)

        val tokens = Tokens.from(store)
        val whileOpen = databaseBytes(dir)
        assertTrue(whileOpen.containsText("written with a store"), "these are the device's database files")
        tokens.assertNotIn(whileOpen)
        client.shutdown()
        tokens.assertNotIn(databaseBytes(dir))
    }

    @Test
    fun `tokens an earlier version kept in the database move to the store`() = runBlocking {
        val dir = tempDir("tandem-adopt-")
        val before = openClient("store-bob", dataDir = dir)
        server.connect(before)
        before.shutdown()
        val fileBefore = databaseBytes(dir)

        val store = InMemoryCredentialStore()
        val after = openClient("store-bob", dataDir = dir, credentialStore = store)
        val tokens = Tokens.from(store)
        assertTrue(fileBefore.containsText(tokens.access), "without a store the database held the access token")
        tokens.assertNotIn(databaseBytes(dir))

        // The moved credentials work.
        server.connect(after)
        after.put(DocKey("notes", "n1"), "{}")
        assertEquals(SyncOutcome.CaughtUp, after.syncOnce(SYNC_TIMEOUT_MS))
        assertEquals(0uL, after.status().pending)
        after.shutdown()
        Tokens.from(store).assertNotIn(databaseBytes(dir))
    }

    @Test
    fun `a device whose store lost its value registers again and keeps syncing`() = runBlocking {
        // What KeystoreCredentialStore does with a value it can no longer
        // decrypt: it answers that there is none.
        val store = InMemoryCredentialStore()
        val dir = tempDir("tandem-lost-")
        val first = openClient("store-carol", dataDir = dir, credentialStore = store)
        server.connect(first)
        val lost = Tokens.from(store)
        first.shutdown()
        store.delete()

        val again = openClient("store-carol", dataDir = dir, credentialStore = store)
        again.put(DocKey("notes", "after"), """{"text":"after registering again"}""")
        server.connect(again)
        assertEquals(0uL, again.status().pending)
        assertNotEquals(lost.refresh, Tokens.from(store).refresh, "new credentials")

        val other = openClient("store-carol", "other")
        server.connect(other)
        withTimeout(SYNC_TIMEOUT_MS.toLong()) {
            other.observe(DocKey("notes", "after")).first { it != null }
        }
        again.shutdown()
        other.shutdown()
    }

    @Test
    fun `wipe signs out, removes credentials, database and outbox, and counts unsent writes`() = runBlocking {
        val store = InMemoryCredentialStore()
        val dir = tempDir("tandem-wipe-")
        val client = openClient("store-dave", dataDir = dir, credentialStore = store)
        client.put(DocKey("notes", "sent"), "{}")
        server.connect(client)
        client.setNetworkAvailable(false)
        client.put(DocKey("notes", "unsent-1"), "{}")
        client.put(DocKey("notes", "unsent-2"), "{}")
        assertNotNull(store.load())

        assertEquals(2uL, client.wipe(), "two writes had not reached the server")
        assertNull(store.load(), "the credentials are deleted")
        assertFalse(File(dir, "tandem.db").exists(), "the database is deleted")
        assertFailsWith<TandemException.Closed> { client.put(DocKey("notes", "n"), "{}") }

        // The directory is a new device now: nothing local, nothing to send.
        val fresh = openClient("store-dave", dataDir = dir, credentialStore = store)
        assertNull(fresh.get(DocKey("notes", "unsent-1")))
        assertNull(fresh.get(DocKey("notes", "sent")))
        assertEquals(0uL, fresh.status().pending)
        fresh.shutdown()
    }

    /** The tokens in a store's value: JSON the engine wrote (`access_token`, `refresh_token`). */
    private class Tokens(val access: String, val refresh: String) {
        fun assertNotIn(bytes: ByteArray) {
            assertFalse(bytes.containsText(access), "the access token is in the database file")
            assertFalse(bytes.containsText(refresh), "the refresh token is in the database file")
        }

        companion object {
            fun from(store: InMemoryCredentialStore): Tokens {
                val json = store.load()?.toString(Charsets.UTF_8) ?: fail("the store holds no credentials")
                fun field(name: String) = Regex(""""$name"\s*:\s*"([^"\\]+)"""").find(json)?.groupValues?.get(1)
                    ?: fail("no $name in the stored credentials")
                return Tokens(field("access_token"), field("refresh_token"))
            }
        }
    }
}
