package dev.tandem

import dev.tandem.ffi.Client
import dev.tandem.ffi.ClientConfig
import dev.tandem.ffi.Conflict
import dev.tandem.ffi.ConflictHandler
import dev.tandem.ffi.ConnectionState
import dev.tandem.ffi.DocKey
import dev.tandem.ffi.Document
import dev.tandem.ffi.Query
import dev.tandem.ffi.Resolution
import dev.tandem.ffi.SyncConfig
import dev.tandem.ffi.SyncOutcome
import dev.tandem.ffi.TandemException
import dev.tandem.ffi.defaultSyncTuning
import kotlinx.coroutines.Dispatchers
import kotlinx.coroutines.channels.Channel
import kotlinx.coroutines.delay
import kotlinx.coroutines.flow.first
import kotlinx.coroutines.launch
import kotlinx.coroutines.runBlocking
import kotlinx.coroutines.withTimeout
import java.util.concurrent.CopyOnWriteArrayList
import kotlin.test.AfterTest
import kotlin.test.Test
import kotlin.test.assertEquals
import kotlin.test.assertFailsWith
import kotlin.test.assertTrue

/** Two and more devices syncing through a real `tandem serve`, driven from Kotlin. */
class SyncTest {
    private val server = TandemServer(
        schema = """{"collections": {"contacts": {"policy": "manual"}}}""",
    )

    @AfterTest
    fun stopServer() = server.close()

    @Test
    fun `an offline write on one device reaches the other device's Flow after sync`() = runBlocking {
        val phone = openClient("alice", "phone")
        val laptop = openClient("alice", "laptop")
        server.connect(laptop)
        val seen = Channel<List<Document>>(Channel.UNLIMITED)
        val collector = launch(Dispatchers.Default) {
            laptop.observe(Query("notes")).collect { seen.send(it) }
        }
        withTimeout(DELIVERY_MS) { assertEquals(emptyList(), seen.receive()) }

        // Written before the phone has ever synced: it waits in the outbox.
        phone.put(DocKey("notes", "n1"), """{"text":"written offline"}""")
        assertEquals(1uL, phone.status().pending)
        server.connect(phone)
        assertEquals(0uL, phone.status().pending)

        val received = withTimeout(SYNC_TIMEOUT_MS.toLong()) {
            var docs = seen.receive()
            while (docs.isEmpty()) docs = seen.receive()
            docs
        }
        assertEquals(listOf("n1"), received.map { it.id })
        assertEquals("""{"text":"written offline"}""", received[0].fieldsJson)
        assertTrue(received[0].version != null && !received[0].pending, "confirmed by the server")

        collector.cancel()
        collector.join()
        assertEquals(0uL, laptop.activeSubscriptions())
        phone.shutdown()
        laptop.shutdown()
    }

    @Test
    fun `the status Flow goes from offline to online`() = runBlocking {
        val client = openClient("bob")
        val states = Channel<ConnectionState>(Channel.UNLIMITED)
        val collector = launch(Dispatchers.Default) {
            client.statusUpdates().collect { states.send(it.connection) }
        }
        withTimeout(DELIVERY_MS) { assertEquals(ConnectionState.OFFLINE, states.receive()) }
        client.startSync(server.syncConfig(), tokenProvider { "dev:bob" })
        withTimeout(SYNC_TIMEOUT_MS.toLong()) {
            while (states.receive() != ConnectionState.ONLINE) Unit
        }
        assertEquals(ConnectionState.ONLINE, client.status().connection)

        client.setNetworkAvailable(false)
        withTimeout(SYNC_TIMEOUT_MS.toLong()) {
            while (states.receive() != ConnectionState.OFFLINE) Unit
        }
        collector.cancel()
        collector.join()
        assertEquals(0uL, client.activeSubscriptions())
        client.shutdown()
    }

    @Test
    fun `a token the server refuses is Unauthorized`() = runBlocking {
        val client = openClient("carol")
        client.startSync(SyncConfig(serverUrl = server.url), tokenProvider { "not-a-dev-token" })
        assertFailsWith<TandemException.Unauthorized> { client.spaces() }
        client.shutdown()
    }

    @Test
    fun `a token provider that signs the user out is Unauthorized`() = runBlocking {
        val client = openClient("dave")
        client.startSync(
            SyncConfig(serverUrl = server.url),
            tokenProvider { throw TandemException.Unauthorized("signed out") },
        )
        val error = assertFailsWith<TandemException.Unauthorized> { client.spaces() }
        assertTrue(error.reason.contains("signed out"), error.reason)
        client.shutdown()
    }

    @Test
    fun `a conflict handler written in Kotlin is called and its choice wins`() = runBlocking {
        val contact = DocKey("contacts", "c1")
        val first = openClient("erin", "first")
        val second = openClient("erin", "second")
        server.connect(first)
        server.connect(second)
        first.put(contact, """{"name":"Ann","phone":"1"}""")
        assertEquals(SyncOutcome.CaughtUp, first.syncOnce(SYNC_TIMEOUT_MS))
        // The server sends the change on to the second device in its own
        // time (a bounded sync there may return before it arrives).
        withTimeout(SYNC_TIMEOUT_MS.toLong()) {
            second.observe(contact).first { it?.fieldsJson == """{"name":"Ann","phone":"1"}""" }
        }

        // The second device goes offline and edits the name while the first
        // changes the phone number. The second must be offline before the
        // change is made, or it could receive it and edit on top of it.
        second.setNetworkAvailable(false)
        withTimeout(SYNC_TIMEOUT_MS.toLong()) {
            second.statusUpdates().first { it.connection == ConnectionState.OFFLINE }
        }
        first.patch(contact, """{"phone":"2"}""")
        assertEquals(SyncOutcome.CaughtUp, first.syncOnce(SYNC_TIMEOUT_MS))
        second.patch(contact, """{"name":"Anna"}""")

        val merged = """{"name":"Anna (merged)","phone":"2"}"""
        val conflicts = CopyOnWriteArrayList<Conflict>()
        second.setConflictHandler(object : ConflictHandler {
            override fun resolve(conflict: Conflict): Resolution {
                conflicts.add(conflict)
                return Resolution.Merged(merged)
            }
        })
        second.setNetworkAvailable(true)
        // On reconnecting, the refusal of the pending edit and the first
        // device's change reach the second device in either order; the
        // handler's merge is then a write of its own. Wait until the server
        // has confirmed it rather than for one bounded sync.
        withTimeout(SYNC_TIMEOUT_MS.toLong()) {
            second.observe(contact).first { it != null && it.fieldsJson == merged && it.version != null && !it.pending }
        }

        assertEquals(1, conflicts.size, "the handler was called once")
        assertEquals("manual", conflicts[0].policy)
        // The local view is the pending edit on the confirmed state the
        // device had when the server refused it: rebased on the first
        // device's change if that arrived first, else on the state the edit
        // was made on.
        assertTrue(
            conflicts[0].localJson in setOf("""{"name":"Anna","phone":"2"}""", """{"name":"Anna","phone":"1"}"""),
            conflicts[0].localJson,
        )
        assertEquals("""{"name":"Ann","phone":"2"}""", conflicts[0].remoteJson)
        assertEquals("merged", second.conflicts(10u).first().winner)

        withTimeout(SYNC_TIMEOUT_MS.toLong()) {
            first.observe(contact).first { it?.fieldsJson == merged }
        }
        first.shutdown()
        second.shutdown()
    }

    @Test
    fun `a device syncs with tuning of its own`() = runBlocking {
        val client = openClient("olga")
        // One write per batch, and quick reconnects.
        val tuning = defaultSyncTuning().copy(maxBatch = 1u, reconnectInitialMs = 100u, reconnectMaxMs = 1_000u)
        repeat(3) { client.put(DocKey("notes", "n$it"), "{}") }
        client.startSync(server.syncConfig().copy(tuning = tuning), tokenProvider { "dev:olga" })
        assertEquals(SyncOutcome.CaughtUp, client.syncOnce(SYNC_TIMEOUT_MS))
        assertEquals(0uL, client.status().pending)
        client.shutdown()
    }

    @Test
    fun `a device keeps within its cache limit, enforceCacheLimit evicts again, and fetch gets documents back`() =
        runBlocking {
            val writer = openClient("paul", "writer")
            server.connect(writer)
            val h1 = DocKey("history", "h1")
            val h2 = DocKey("history", "h2")
            writer.put(h1, """{"text":"old message"}""")
            writer.put(h2, """{"text":"older message"}""")
            assertEquals(SyncOutcome.CaughtUp, writer.syncOnce(SYNC_TIMEOUT_MS))

            // A budget no database fits in: every confirmed history document goes.
            val small = Client.open(
                ClientConfig(
                    dataDir = tempDir("tandem-cache-").absolutePath,
                    userId = "paul",
                    deviceName = "small",
                    cacheLimitBytes = 1u,
                    evictableCollections = listOf("history"),
                ),
            )
            server.connect(small)
            // An evicted document is not on the device: get says so, and
            // only fetch gets it. Syncing evicts after catching up.
            fun evicted(key: DocKey) = try {
                small.get(key)
                false
            } catch (e: TandemException.Network) {
                true
            }
            withTimeout(SYNC_TIMEOUT_MS.toLong()) {
                while (!evicted(h1) || !evicted(h2)) delay(20)
            }

            assertEquals("""{"text":"old message"}""", small.fetch(h1)?.fieldsJson)
            assertEquals("""{"text":"old message"}""", small.get(h1)?.fieldsJson, "local again")
            assertEquals(1uL, small.enforceCacheLimit(), "the fetched document is over the budget")
            assertTrue(evicted(h1))
            assertEquals("""{"text":"older message"}""", small.fetch(h2)?.fieldsJson)
            writer.shutdown()
            small.shutdown()
        }

    @Test
    fun `status callbacks come from the engine's thread and may call back into the client`() = runBlocking {
        val client = openClient("frank")
        val pendingSeen = CopyOnWriteArrayList<ULong>()
        val subscription = client.observeStatus(object : dev.tandem.ffi.StatusObserver {
            override fun onStatus(status: dev.tandem.ffi.SyncStatus) {
                // Re-entering the client from the engine's callback must not deadlock.
                pendingSeen.add(client.status().pending)
            }

            override fun onMutationFailed(failure: dev.tandem.ffi.MutationFailure) = Unit
        })
        client.put(DocKey("notes", "n1"), "{}")
        server.connect(client)
        assertTrue(pendingSeen.isNotEmpty())
        assertEquals(0uL, client.status().pending)
        subscription.cancel()
        subscription.close()
        client.shutdown()
    }

    @Test
    fun `closing a syncing client with live subscriptions is clean`() = runBlocking {
        val client = openClient("grace")
        server.connect(client)
        val flows = List(3) { launch(Dispatchers.Default) { client.observe(Query("notes")).collect { } } }
        val status = launch(Dispatchers.Default) { client.statusUpdates().collect { } }
        withTimeout(DELIVERY_MS) { while (client.activeSubscriptions() < 4uL) kotlinx.coroutines.delay(10) }
        client.shutdown()
        assertFailsWith<TandemException.Closed> { client.put(DocKey("notes", "n1"), "{}") }
        (flows + status).forEach { it.cancel(); it.join() }
        assertEquals(0uL, client.activeSubscriptions())
        assertTrue(!client.isSyncing())
    }
}
