package dev.tandem

import dev.tandem.ffi.DocKey
import dev.tandem.ffi.TandemException
import dev.tandem.ffi.changeEncryptionKey
import kotlinx.coroutines.runBlocking
import java.io.File
import kotlin.test.Test
import kotlin.test.assertEquals
import kotlin.test.assertFailsWith
import kotlin.test.assertFalse
import kotlin.test.assertTrue

/** A device's database encrypted with `ClientConfig.encryptionKey` (SQLCipher), and re-keyed. */
class EncryptionTest {
    private val note = DocKey("notes", "n1")
    private val text = "the secret grocery list"

    @Test
    fun `an encrypted database holds no document text`() {
        val plainDir = tempDir("tandem-plain-")
        val plain = openClient("enc-alice", dataDir = plainDir)
        plain.put(note, """{"text":"$text"}""")
        assertTrue(databaseBytes(plainDir).containsText(text), "a plain database holds the text")
        plain.shutdown()

        val dir = tempDir("tandem-encrypted-")
        val client = openClient("enc-alice", dataDir = dir, encryptionKey = randomKey())
        client.put(note, """{"text":"$text"}""")
        assertEquals("""{"text":"$text"}""", client.get(note)?.fieldsJson)
        assertFalse(databaseBytes(dir).containsText(text), "the text is in the encrypted database file")
        client.shutdown()
        assertFalse(databaseBytes(dir).containsText(text), "the text is in the encrypted database file")
    }

    @Test
    fun `the wrong key fails with wrong_key and the right key keeps documents and the outbox`() = runBlocking {
        val dir = tempDir("tandem-keys-")
        val key = randomKey()
        val client = openClient("enc-bob", dataDir = dir, encryptionKey = key)
        client.put(note, """{"text":"$text"}""")
        client.put(DocKey("notes", "n2"), "{}")
        client.shutdown()

        assertWrongKey { openClient("enc-bob", dataDir = dir, encryptionKey = randomKey()) }
        assertWrongKey { openClient("enc-bob", dataDir = dir) }
        val short = assertFailsWith<TandemException.InvalidInput> {
            openClient("enc-bob", dataDir = dir, encryptionKey = ByteArray(16))
        }
        assertEquals("invalid_config", short.code, short.reason)

        val reopened = openClient("enc-bob", dataDir = dir, encryptionKey = key)
        assertEquals("""{"text":"$text"}""", reopened.get(note)?.fieldsJson)
        assertEquals(2uL, reopened.status().pending, "the outbox is kept")
        TandemServer().use { server ->
            server.connect(reopened)
            assertEquals(0uL, reopened.status().pending, "and sent")
        }
        reopened.shutdown()
    }

    @Test
    fun `changeEncryptionKey encrypts, re-keys and decrypts a database`() = runBlocking {
        val dir = tempDir("tandem-rekey-")
        val first = randomKey()
        val second = randomKey()
        openClient("enc-carol", dataDir = dir).apply {
            put(note, """{"text":"$text"}""")
            shutdown()
        }

        changeEncryptionKey(dir.absolutePath, null, first)
        assertFalse(databaseBytes(dir).containsText(text), "encrypted")
        assertWrongKey { openClient("enc-carol", dataDir = dir) }
        assertHoldsNote(dir, first)

        // A wrong current key changes nothing.
        assertWrongKey { changeEncryptionKey(dir.absolutePath, randomKey(), second) }
        assertHoldsNote(dir, first)

        changeEncryptionKey(dir.absolutePath, first, second)
        assertWrongKey { openClient("enc-carol", dataDir = dir, encryptionKey = first) }
        assertHoldsNote(dir, second)

        changeEncryptionKey(dir.absolutePath, second, null)
        assertTrue(databaseBytes(dir).containsText(text), "decrypted")
        assertHoldsNote(dir, null)
    }

    private fun assertHoldsNote(dir: File, key: ByteArray?) {
        val client = openClient("enc-carol", dataDir = dir, encryptionKey = key)
        assertEquals("""{"text":"$text"}""", client.get(note)?.fieldsJson)
        client.shutdown()
    }

    private inline fun assertWrongKey(open: () -> Unit) {
        val error = assertFailsWith<TandemException.InvalidInput> { open() }
        assertEquals("wrong_key", error.code, error.reason)
    }
}
