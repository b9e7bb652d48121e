package dev.tandem

import dev.tandem.ffi.Client
import dev.tandem.ffi.ClientConfig
import dev.tandem.ffi.CredentialStore
import dev.tandem.ffi.DocKey
import dev.tandem.ffi.Document
import dev.tandem.ffi.Filter
import dev.tandem.ffi.FilterOp
import dev.tandem.ffi.FilterValue
import dev.tandem.ffi.Query
import dev.tandem.ffi.SyncConfig
import kotlinx.coroutines.flow.first
import kotlinx.coroutines.runBlocking
import kotlinx.coroutines.withTimeout
import java.io.File
import kotlin.test.Test
import kotlin.test.assertEquals
import kotlin.test.assertFalse
import kotlin.test.assertNull
import kotlin.test.assertTrue

/**
 * The Kotlin example of README.md, run as written: the lines between the
 * markers are the README's, which scripts/android-check.sh checks. The app's
 * parts are parameters: in an app [credentialStore] is
 * `KeystoreCredentialStore(context, "alice")` and [serverUrl] a public https
 * server; here they are an [InMemoryCredentialStore] and a `tandem serve`
 * over TLS with the test CA of tests/fixtures/tls as [privateCaPem].
 */
class ReadmeExampleTest {
    private suspend fun showOpenTasksThenSignOut(
        dataDir: String,
        databaseKey: ByteArray,
        credentialStore: CredentialStore,
        serverUrl: String,
        privateCaPem: String,
        userToken: suspend () -> String,
        render: (List<Document>) -> Boolean,
    ): ULong {
        // README: begin Kotlin example
        val client = Client.open(
            ClientConfig(dataDir = dataDir, userId = "alice", deviceName = "Alice's phone",
                encryptionKey = databaseKey),      // 32 random bytes the app keeps secret; optional
            credentialStore = credentialStore,     // KeystoreCredentialStore(context, "alice"): tokens never in the database file
        )
        client.startSync(SyncConfig(serverUrl = serverUrl,   // "https://sync.example.com"
            trustedRootsPem = listOf(privateCaPem)), tokenProvider { userToken() })   // extra roots: optional
        client.declareIndex("tasks", listOf("done"))
        client.put(DocKey("tasks", "t1"), """{"title":"Buy milk","done":false}""")
        val openTasks = Query("tasks", filters = listOf(Filter("done", FilterOp.EQ, FilterValue.Bool(false))))
        client.observe(openTasks).first { tasks -> render(tasks) }   // collect { } in an app
        // Signing out: everything local goes, and the app learns what was unsent.
        val unsent = client.wipe()
        // README: end Kotlin example
        return unsent
    }

    @Test
    fun `the README example runs`() = runBlocking {
        TandemServer(tls = true).use { server ->
            val dataDir = tempDir("readme-")
            val store = InMemoryCredentialStore()
            val rendered = mutableListOf<List<Document>>()
            val unsent = withTimeout(SYNC_TIMEOUT_MS.toLong()) {
                showOpenTasksThenSignOut(
                    dataDir.absolutePath, randomKey(), store, server.url, testCaPem(), { "dev:alice" },
                ) { tasks ->
                    rendered.add(tasks)
                    // Rendered until the server has confirmed the task, so
                    // that signing out loses nothing.
                    tasks.any { !it.pending }
                }
            }
            assertEquals(listOf("t1"), rendered.first().map { it.id }, "rendered from the local database at once")
            assertEquals(0uL, unsent)
            assertNull(store.load(), "signing out deleted the credentials")
            assertFalse(File(dataDir, "tandem.db").exists(), "and the database")

            // The task reached Alice's other devices through the server.
            val laptop = openClient("alice", "laptop")
            server.connect(laptop)
            val synced = withTimeout(SYNC_TIMEOUT_MS.toLong()) {
                laptop.observe(DocKey("tasks", "t1")).first { it != null }
            }
            assertTrue(synced!!.fieldsJson.contains("Buy milk"), synced.fieldsJson)
            laptop.shutdown()
        }
    }
}
