package dev.tandem

import dev.tandem.ffi.Client
import dev.tandem.ffi.ClientConfig
import dev.tandem.ffi.CredentialStore
import dev.tandem.ffi.DocKey
import dev.tandem.ffi.SyncConfig
import dev.tandem.ffi.SyncOutcome
import kotlinx.coroutines.runBlocking
import java.io.BufferedReader
import java.io.File
import java.io.InputStreamReader
import java.nio.file.Files
import java.security.SecureRandom
import java.util.concurrent.ConcurrentHashMap
import java.util.concurrent.TimeUnit
import kotlin.test.assertEquals
import kotlin.test.fail

/** A fresh data directory, deleted when the JVM exits. */
fun tempDir(prefix: String): File =
    Files.createTempDirectory(prefix).toFile().also { it.deleteOnExit() }

/**
 * Opens a local device of [user] in [dataDir] (a fresh directory unless
 * given), its database encrypted with [encryptionKey] if given, its tokens
 * in [credentialStore] if given.
 */
fun openClient(
    user: String = "alice",
    device: String = "jvm-test",
    dataDir: File = tempDir("tandem-$user-"),
    encryptionKey: ByteArray? = null,
    credentialStore: CredentialStore? = null,
): Client = runBlocking {
    Client.open(
        ClientConfig(
            dataDir = dataDir.absolutePath,
            userId = user,
            deviceName = device,
            encryptionKey = encryptionKey,
        ),
        credentialStore,
    )
}

/** A file of tests/fixtures (`-Dtandem.fixtures`, set by the pom). */
fun fixture(path: String): File {
    val dir = System.getProperty("tandem.fixtures")
        ?: fail("-Dtandem.fixtures=<path of tests/fixtures> is not set")
    return File(dir, path).also { if (!it.isFile) fail("no fixture at $it") }
}

/** The test certificate authority that signed the TLS server's certificate. */
fun testCaPem(): String = fixture("tls/ca.pem").readText()

/** 32 random bytes: a database key. */
fun randomKey(): ByteArray = ByteArray(32).also { SecureRandom().nextBytes(it) }

/**
 * The bytes of the device's database files in [dataDir] (the database and
 * its write-ahead log, whichever exist), to look for what must not be there.
 */
fun databaseBytes(dataDir: File): ByteArray =
    listOf("tandem.db", "tandem.db-wal")
        .map { File(dataDir, it) }
        .filter { it.isFile }
        .also { if (it.isEmpty()) fail("no database file in $dataDir") }
        .fold(ByteArray(0)) { all, file -> all + file.readBytes() }

/** Whether [text], as UTF-8, occurs in [bytes]. */
fun ByteArray.containsText(text: String): Boolean {
    val needle = text.toByteArray(Charsets.UTF_8)
    require(needle.isNotEmpty())
    return (0..size - needle.size).any { start -> needle.indices.all { this[start + it] == needle[it] } }
}

fun task(id: String) = DocKey(collection = "tasks", id = id)

/**
 * A real `tandem serve --dev-auth` on a free loopback port, started from the
 * binary the build produced (`-Dtandem.cli`), with [schema] as its schema
 * file; with [tls], serving https and wss with the test certificate of
 * tests/fixtures/tls (for 127.0.0.1, signed by [testCaPem]). Stop it with
 * [close]. A server whose start fails is stopped before the constructor
 * throws, and one still running when the JVM exits (a test that never
 * reached its tear-down) is killed by a shutdown hook.
 */
class TandemServer(schema: String = """{"collections": {}}""", val tls: Boolean = false) : AutoCloseable {
    private val process: Process
    val url: String

    init {
        val cli = System.getProperty("tandem.cli")
            ?: fail("-Dtandem.cli=<path of the tandem binary> is not set")
        if (!File(cli).canExecute()) fail("no tandem binary at $cli: build it with cargo build -p tandem-cli")
        val dir = tempDir("tandem-server-")
        val schemaFile = File(dir, "schema.json").apply { writeText(schema) }
        val log = File(dir, "server.log")
        val tlsArgs = if (tls) {
            listOf("--tls-cert", fixture("tls/server.pem").path, "--tls-key", fixture("tls/server-key.pem").path)
        } else {
            emptyList()
        }
        process = ProcessBuilder(
            listOf(
                cli, "serve",
                "--listen", "127.0.0.1:0",
                "--db", File(dir, "server.db").absolutePath,
                "--schema", schemaFile.absolutePath,
                "--dev-auth",
            ) + tlsArgs,
        )
            .redirectError(log)
            .start()
        runningServers.add(process)
        url = try {
            val firstLine = BufferedReader(InputStreamReader(process.inputStream)).readLine()
                ?: fail("tandem serve exited: " + log.readText())
            val address = Regex(""""listening"\s*:\s*"([^"]+)"""").find(firstLine)?.groupValues?.get(1)
                ?: fail("unexpected first line from tandem serve: $firstLine")
            (if (tls) "https://" else "http://") + address
        } catch (e: Throwable) {
            stop(process)
            throw e
        }
    }

    /** How a device reaches this server: its URL and, over TLS, the test CA as a trusted root. */
    fun syncConfig(): SyncConfig = SyncConfig(
        serverUrl = url,
        platform = "jvm-test",
        trustedRootsPem = if (tls) listOf(testCaPem()) else emptyList(),
    )

    /** Starts syncing [client] as `dev:<user>` and waits until it has caught up. */
    fun connect(client: Client, user: String = client.userId()) = runBlocking {
        client.startSync(syncConfig(), tokenProvider { "dev:$user" })
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
