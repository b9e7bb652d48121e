package dev.tandem

import dev.tandem.ffi.Client
import dev.tandem.ffi.Document
import dev.tandem.ffi.Filter
import dev.tandem.ffi.FilterOp
import dev.tandem.ffi.FilterValue
import dev.tandem.ffi.LogLevel
import dev.tandem.ffi.Logger
import dev.tandem.ffi.OutboxState
import dev.tandem.ffi.Query
import dev.tandem.ffi.QueryObserver
import dev.tandem.ffi.Subscription
import dev.tandem.ffi.SyncTuning
import dev.tandem.ffi.TandemException
import dev.tandem.ffi.defaultSyncTuning
import dev.tandem.ffi.setLogger
import kotlinx.coroutines.channels.Channel
import kotlinx.coroutines.launch
import kotlinx.coroutines.runBlocking
import kotlinx.coroutines.withTimeout
import java.util.concurrent.CopyOnWriteArrayList
import java.util.concurrent.CountDownLatch
import java.util.concurrent.LinkedBlockingQueue
import java.util.concurrent.TimeUnit
import kotlin.test.AfterTest
import kotlin.test.Test
import kotlin.test.assertEquals
import kotlin.test.assertFailsWith
import kotlin.test.assertNotNull
import kotlin.test.assertNull
import kotlin.test.assertTrue

/** The local client through the generated Kotlin bindings, on the host JVM. */
class LocalClientTest {
    private val client: Client = openClient()

    @AfterTest
    fun shutDown() {
        client.shutdown()
        client.close()
    }

    /** Sends each result's ids to a queue the test reads. */
    private class Ids : QueryObserver {
        val results = LinkedBlockingQueue<List<String>>()
        override fun onResult(documents: List<Document>) {
            results.add(documents.map { it.id })
        }

        fun next(): List<String>? = results.poll(DELIVERY_MS, TimeUnit.MILLISECONDS)
        fun none(): Boolean = results.poll(SILENCE_MS, TimeUnit.MILLISECONDS) == null
    }

    @Test
    fun `put, get and query round-trip documents as JSON with typed metadata`() {
        client.declareIndex("tasks", listOf("done"))
        val milk = client.put(task("t1"), """{"title":"milk","done":false}""")
        client.put(task("t2"), """{"title":"eggs","done":true}""")

        assertEquals("""{"done":false,"title":"milk"}""", milk.fieldsJson)
        assertEquals("tasks", milk.collection)
        assertEquals(client.personalSpace(), milk.space)
        assertNull(milk.version, "the server has not confirmed it")
        assertTrue(milk.pending)
        assertEquals(milk, client.get(task("t1")))
        assertNull(client.get(task("none")))

        val open = client.query(
            Query("tasks", filters = listOf(Filter("done", FilterOp.EQ, FilterValue.Bool(false)))),
        )
        assertEquals(listOf("t1"), open.map { it.id })
        val states = client.pendingMutations().map { it.state }
        assertEquals(listOf<OutboxState>(OutboxState.Queued, OutboxState.Queued), states)
        assertEquals(2uL, client.status().pending)
    }

    @Test
    fun `bad input is a typed InvalidInput with a code and a reason`() {
        val notJson = assertFailsWith<TandemException.InvalidInput> {
            client.put(task("t1"), "{not json")
        }
        assertEquals("invalid_json", notJson.code)
        assertTrue(notJson.reason.isNotEmpty())

        val notAnObject = assertFailsWith<TandemException.InvalidInput> { client.put(task("t1"), "[1, 2]") }
        assertEquals("not_an_object", notAnObject.code)

        val notIndexed = assertFailsWith<TandemException.InvalidInput> {
            client.query(Query("tasks", orderBy = "title"))
        }
        assertEquals("not_indexed", notIndexed.code)
        assertNull(client.get(task("t1")), "nothing was written")
    }

    @Test
    fun `a query observer fires after a write and stops after cancel`() {
        val ids = Ids()
        val subscription = client.observeQuery(Query("tasks"), ids)
        assertEquals(emptyList(), ids.next(), "the current result first")
        client.put(task("t1"), "{}")
        assertEquals(listOf("t1"), ids.next())
        assertEquals(1uL, client.activeSubscriptions())

        subscription.cancel()
        assertTrue(subscription.isCancelled())
        assertEquals(0uL, client.activeSubscriptions(), "Rust saw the cancel")
        client.put(task("t2"), "{}")
        assertTrue(ids.none(), "no callback after cancel")
        subscription.close()
    }

    @Test
    fun `the Flow emits the current result, then the update, and cancels the subscription with its collector`() =
        runBlocking {
            client.put(task("t1"), "{}")
            val seen = Channel<List<String>>(Channel.UNLIMITED)
            val collector = launch {
                client.observe(Query("tasks")).collect { docs -> seen.send(docs.map { it.id }) }
            }
            withTimeout(DELIVERY_MS) {
                assertEquals(listOf("t1"), seen.receive(), "the current result")
                assertEquals(1uL, client.activeSubscriptions())
                client.put(task("t2"), "{}")
                assertEquals(listOf("t1", "t2"), seen.receive(), "the update")
            }
            collector.cancel()
            collector.join()
            assertEquals(0uL, client.activeSubscriptions(), "cancelling the collector cancelled the Rust subscription")
            client.put(task("t3"), "{}")
            Thread.sleep(SILENCE_MS)
            assertTrue(seen.tryReceive().isFailure, "nothing after the collector went")
        }

    @Test
    fun `a document Flow follows one document to its delete`() = runBlocking {
        val seen = Channel<Document?>(Channel.UNLIMITED)
        val collector = launch { client.observe(task("t1")).collect { seen.send(it) } }
        withTimeout(DELIVERY_MS) {
            assertNull(seen.receive(), "no document yet")
            client.put(task("t1"), """{"title":"milk"}""")
            assertEquals("""{"title":"milk"}""", seen.receive()?.fieldsJson)
            client.delete(task("t1"))
            assertTrue(seen.receive()!!.deleted, "a tombstone")
        }
        collector.cancel()
        collector.join()
        assertEquals(0uL, client.activeSubscriptions())
    }

    @Test
    fun `a closed client says Closed`() {
        client.put(task("t1"), "{}")
        client.shutdown()
        client.shutdown()
        assertFailsWith<TandemException.Closed> { client.put(task("t2"), "{}") }
        assertFailsWith<TandemException.Closed> { client.get(task("t1")) }
        assertFailsWith<TandemException.Closed> { client.observeQuery(Query("tasks"), Ids()) }
    }

    @Test
    fun `a callback that throws does not crash Rust, and the failure reaches the logger`() {
        val logged = CopyOnWriteArrayList<String>()
        setLogger(object : Logger {
            override fun log(level: LogLevel, target: String, message: String) {
                if (level <= LogLevel.WARN) logged.add(message)
            }
        }, LogLevel.INFO)

        val throwing = client.observeQuery(Query("tasks"), object : QueryObserver {
            override fun onResult(documents: List<Document>) {
                throw IllegalStateException("a bug in the app's observer")
            }
        })
        val ids = Ids()
        val working = client.observeQuery(Query("tasks"), ids)
        assertEquals(emptyList(), ids.next())
        client.put(task("t1"), "{}")
        assertEquals(listOf("t1"), ids.next(), "the other observer still works")
        client.put(task("t2"), "{}")
        assertEquals(listOf("t1", "t2"), ids.next(), "and keeps working")
        assertTrue(
            logged.any { it.contains("a query observer failed") && it.contains("a bug in the app's observer") },
            "logged: $logged",
        )
        throwing.close()
        working.close()
    }

    @Test
    fun `an observer may call back into the client and cancel itself without deadlock`() {
        val reads = LinkedBlockingQueue<String>()
        val cancelled = CountDownLatch(1)
        lateinit var subscription: Subscription
        subscription = client.observeQuery(Query("tasks"), object : QueryObserver {
            override fun onResult(documents: List<Document>) {
                // On the observer thread: read through the client, then cancel.
                reads.add(client.status().pending.toString())
                if (documents.isNotEmpty()) {
                    assertNotNull(client.get(task(documents[0].id)))
                    subscription.cancel()
                    cancelled.countDown()
                }
            }
        })
        assertEquals("0", reads.poll(DELIVERY_MS, TimeUnit.MILLISECONDS))
        client.put(task("t1"), "{}")
        assertTrue(cancelled.await(DELIVERY_MS, TimeUnit.MILLISECONDS), "the observer cancelled itself")
        assertEquals("1", reads.poll(DELIVERY_MS, TimeUnit.MILLISECONDS))
        client.put(task("t2"), "{}")
        assertNull(reads.poll(SILENCE_MS, TimeUnit.MILLISECONDS))
        assertEquals(0uL, client.activeSubscriptions())
        subscription.close()
    }

    @Test
    fun `SyncTuning's defaults are the engine's`() {
        assertEquals(defaultSyncTuning(), SyncTuning())
    }

    @Test
    fun `closing the client with live subscriptions is clean`() {
        val subscriptions = (1..3).map { client.observeQuery(Query("tasks"), Ids()) }
        client.shutdown()
        assertEquals(3uL, client.activeSubscriptions(), "still held by the app")
        subscriptions.forEach { it.cancel(); it.close() }
        assertEquals(0uL, client.activeSubscriptions())
    }
}
