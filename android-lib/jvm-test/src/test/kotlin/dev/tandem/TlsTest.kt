package dev.tandem

import dev.tandem.ffi.DocKey
import dev.tandem.ffi.SyncConfig
import dev.tandem.ffi.SyncErrorKind
import dev.tandem.ffi.SyncOutcome
import dev.tandem.ffi.TandemException
import kotlinx.coroutines.flow.first
import kotlinx.coroutines.runBlocking
import kotlinx.coroutines.withTimeout
import java.security.MessageDigest
import java.security.cert.CertificateFactory
import java.util.Base64
import kotlin.test.Test
import kotlin.test.assertEquals
import kotlin.test.assertFailsWith
import kotlin.test.assertFalse
import kotlin.test.assertNull
import kotlin.test.assertTrue

/**
 * Devices syncing with `tandem serve --tls-cert/--tls-key` over https and
 * wss, trusting the test CA of tests/fixtures/tls through
 * `SyncConfig.trustedRootsPem`, and what they do with a server they do not
 * trust.
 */
class TlsTest {
    @Test
    fun `two devices sync over TLS with the test CA as a trusted root`() = runBlocking {
        TandemServer(tls = true).use { server ->
            assertTrue(server.url.startsWith("https://"), server.url)
            val phone = openClient("tls-alice", "phone")
            val laptop = openClient("tls-alice", "laptop")
            server.connect(phone)
            server.connect(laptop)

            phone.put(DocKey("notes", "from-phone"), """{"text":"over TLS"}""")
            laptop.put(DocKey("notes", "from-laptop"), """{"text":"over TLS too"}""")
            withTimeout(SYNC_TIMEOUT_MS.toLong()) {
                laptop.observe(DocKey("notes", "from-phone")).first { it?.fieldsJson == """{"text":"over TLS"}""" }
                phone.observe(DocKey("notes", "from-laptop")).first { it?.fieldsJson == """{"text":"over TLS too"}""" }
            }
            assertNull(phone.status().lastError)
            phone.shutdown()
            laptop.shutdown()
        }
    }

    @Test
    fun `a server whose certificate is not trusted is a Tls error at once and in the status`() = runBlocking {
        TandemServer(tls = true).use { server ->
            val client = openClient("tls-bob")
            client.put(DocKey("notes", "n1"), "{}")
            // No trusted root for the test CA: the system's roots do not know it.
            client.startSync(SyncConfig(serverUrl = server.url), tokenProvider { "dev:tls-bob" })
            // A bounded sync that waited out its time would return TimedOut.
            val error = assertFailsWith<TandemException.Tls> { client.syncOnce(SYNC_TIMEOUT_MS) }
            assertTrue(error.reason.isNotBlank())

            val status = withTimeout(DELIVERY_MS) {
                client.statusUpdates().first { it.lastError?.kind == SyncErrorKind.TLS }
            }
            assertTrue(status.lastError!!.message.isNotBlank())
            assertEquals(1uL, status.pending, "the write waits in the outbox")
            client.shutdown()
        }
    }

    @Test
    fun `a pinned key must be in the server's chain`() = runBlocking {
        TandemServer(tls = true).use { server ->
            val serverKeyHex = serverSpkiSha256().joinToString("") { "%02x".format(it) }
            // A backup pin of a key the server does not have.
            val backupPin = "sha256/" + Base64.getEncoder()
                .encodeToString(MessageDigest.getInstance("SHA-256").digest("a backup key".toByteArray()))

            val pinned = openClient("tls-carol", "pinned")
            pinned.startSync(
                server.syncConfig().copy(pinnedSpkiSha256 = listOf(backupPin, serverKeyHex)),
                tokenProvider { "dev:tls-carol" },
            )
            assertEquals(SyncOutcome.CaughtUp, pinned.syncOnce(SYNC_TIMEOUT_MS))

            val wrongPin = openClient("tls-carol", "wrong-pin")
            wrongPin.startSync(
                server.syncConfig().copy(pinnedSpkiSha256 = listOf(backupPin)),
                tokenProvider { "dev:tls-carol" },
            )
            assertFailsWith<TandemException.Tls> { wrongPin.syncOnce(SYNC_TIMEOUT_MS) }
            pinned.shutdown()
            wrongPin.shutdown()
        }
    }

    @Test
    fun `a bad server URL or TLS setting fails startSync with invalid_config`() = runBlocking {
        val client = openClient("tls-dave")
        val good = SyncConfig(serverUrl = "https://127.0.0.1:9")
        val bad = listOf(
            good.copy(serverUrl = "ftp://127.0.0.1:9"),
            good.copy(serverUrl = "not a url"),
            good.copy(trustedRootsPem = listOf("not a certificate")),
            good.copy(pinnedSpkiSha256 = listOf("sha256/not base64!")),
        )
        for (config in bad) {
            val error = assertFailsWith<TandemException.InvalidInput>(config.toString()) {
                client.startSync(config, tokenProvider { "dev:tls-dave" })
            }
            assertEquals("invalid_config", error.code, error.reason)
            assertFalse(client.isSyncing())
        }
        client.shutdown()
    }

    /** SHA-256 of the SubjectPublicKeyInfo of the test server's certificate. */
    private fun serverSpkiSha256(): ByteArray {
        val certificate = fixture("tls/server.pem").inputStream().use {
            CertificateFactory.getInstance("X.509").generateCertificate(it)
        }
        return MessageDigest.getInstance("SHA-256").digest(certificate.publicKey.encoded)
    }
}
