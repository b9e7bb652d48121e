package dev.tandem

import dev.tandem.ffi.Client
import dev.tandem.ffi.ClientConfig
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
import kotlin.test.Test
import kotlin.test.assertEquals

/** The Kotlin example of README.md, run as written (only the app's parts are parameters). */
class ReadmeExampleTest {
    // README: begin Kotlin example
    suspend fun showOpenTasks(dataDir: String, serverUrl: String, userToken: suspend () -> String, render: (List<Document>) -> Boolean) {
        val client = Client.open(ClientConfig(dataDir = dataDir, userId = "alice", deviceName = "Alice's phone"))
        client.startSync(SyncConfig(serverUrl = serverUrl), tokenProvider { userToken() })
        client.declareIndex("tasks", listOf("done"))

        client.put(DocKey("tasks", "t1"), """{"title":"Buy milk","done":false}""")

        val openTasks = Query("tasks", filters = listOf(Filter("done", FilterOp.EQ, FilterValue.Bool(false))))
        client.observe(openTasks).first { tasks -> render(tasks) } // collect { } in an app
        client.shutdown()
    }
    // README: end Kotlin example

    @Test
    fun `the README example runs`() = runBlocking {
        TandemServer().use { server ->
            val rendered = mutableListOf<List<String>>()
            withTimeout(SYNC_TIMEOUT_MS.toLong()) {
                showOpenTasks(tempDir("readme-").absolutePath, server.url, { "dev:alice" }) { tasks ->
                    rendered.add(tasks.map { it.id })
                    tasks.isNotEmpty()
                }
            }
            assertEquals(listOf("t1"), rendered.last())
        }
    }
}
