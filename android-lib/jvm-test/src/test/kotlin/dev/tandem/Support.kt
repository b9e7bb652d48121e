package dev.tandem

import dev.tandem.ffi.Client
import dev.tandem.ffi.ClientConfig
import dev.tandem.ffi.DocKey
import dev.tandem.ffi.SyncConfig
import dev.tandem.ffi.SyncOutcome
import kotlinx.coroutines.runBlocking
import java.io.BufferedReader
import java.io.File
import java.io.InputStreamReader
import java.nio.file.Files
import java.util.concurrent.ConcurrentHashMap
import java.util.concurrent.TimeUnit
import kotlin.test.assertEquals
import kotlin.test.fail

/** A fresh data directory, deleted when the JVM exits. */
fun tempDir(prefix: String): File =
    Files.createTempDirectory(prefix).toFile().also { it.deleteOnExit() }

/** Opens a local device of [user] in a fresh directory. */
fun openClient(user: String = "alice", device: String = "jvm-test"): Client = runBlocking {
    Client.open(
        ClientConfig(
            dataDir = tempDir("tandem-$user-").absolutePath,
            userId = user,
            deviceName = device,
        ),
    )
}

fun task(id: String) = DocKey(collection = "tasks", id = id)

/**
 * A real `tandem serve --dev-auth` on a free loopback port, started from the
 * binary the build produced (`-Dtandem.cli`), with [schema] as its schema
 * file. Stop it with [close]. A server whose start fails is stopped before
 * the constructor throws, and one still running when the JVM exits (a test
 * that never reached its tear-down) is killed by a shutdown hook.
 */
class TandemServer(schema: String = """{"collections": {}}""") : AutoCloseable {
    private val process: Process
    val url: String

    init {
        val cli = System.getProperty("tandem.cli")
            ?: fail("-Dtandem.cli=<path of the tandem binary> is not set")
        if (!File(cli).canExecute()) fail("no tandem binary at $cli: build it with cargo build -p tandem-cli")
        val dir = tempDir("tandem-server-")
        val schemaFile = File(dir, "schema.json").apply { writeText(schema) }
        val log = File(dir, "server.log")
        process = ProcessBuilder(
            cli, "serve",
            "--listen", "127.0.0.1:0",
            "--db", File(dir, "server.db").absolutePath,
            "--schema", schemaFile.absolutePath,
            "--dev-auth",
        )
            .redirectError(log)
            .start()
        runningServers.add(process)
        url = try {
            val firstLine = BufferedReader(InputStreamReader(process.inputStream)).readLine()
                ?: fail("tandem serve exited: " + log.readText())
            val address = Regex(""""listening"\s*:\s*"([^"]+)"""").find(firstLine)?.groupValues?.get(1)
                ?: fail("unexpected first line from tandem serve: $firstLine")
            "http://$address"
        } catch (e: Throwable) {
            stop(process)
            throw e
        }
    }

    /** Starts syncing [client] as `dev:<user>` and waits until it has caught up. */
    fun connect(client: Client, user: String = client.userId()) = runBlocking {
        client.startSync(SyncConfig(serverUrl = url, platform = "jvm-test"), tokenProvider { "dev:$user" })
        assertEquals(SyncOutcome.CaughtUp, client.syncOnce(SYNC_TIMEOUT_MS))
    }

    /** Stops the server: gracefully (SIGTERM), or killed if it has not exited after 10 s. */
    override fun close() = stop(process)
}

/** The servers started and not stopped yet; killed if the JVM exits first. */
private val runningServers: MutableSet<Process> = ConcurrentHashMap.newKeySet<Process>().also { servers ->
    Runtime.getRuntime().addShutdownHook(Thread { servers.forEach { it.destroyForcibly() } })
}

private fun stop(server: Process) {
    server.destroy()
    if (!server.waitFor(10, TimeUnit.SECONDS)) {
        server.destroyForcibly()
        server.waitFor(10, TimeUnit.SECONDS)
    }
    runningServers.remove(server)
}

/** A bounded sync's time limit in the tests: generous for a loaded CI machine. */
const val SYNC_TIMEOUT_MS: ULong = 20_000u

/** How long a test waits for a callback that must come. */
const val DELIVERY_MS: Long = 10_000

/** How long a test waits for a callback that must not come. */
const val SILENCE_MS: Long = 300
