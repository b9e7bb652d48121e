// The device's credentials kept with the Android Keystore. Android-only
// code (android.* imports) lives under src/android/kotlin: the AAR
// (build.gradle.kts) and the Android-flavour check (robolectric-test)
// compile it; the host-JVM harness (jvm-test) cannot, and does not.
package dev.tandem

import android.content.Context
import android.security.keystore.KeyGenParameterSpec
import android.security.keystore.KeyPermanentlyInvalidatedException
import android.security.keystore.KeyProperties
import dev.tandem.ffi.CredentialStore
import dev.tandem.ffi.TandemException
import java.io.File
import java.io.FileOutputStream
import java.io.IOException
import java.net.URLEncoder
import java.security.GeneralSecurityException
import java.security.KeyStore
import java.security.ProviderException
import java.security.UnrecoverableKeyException
import javax.crypto.AEADBadTagException
import javax.crypto.Cipher
import javax.crypto.KeyGenerator
import javax.crypto.SecretKey
import javax.crypto.spec.GCMParameterSpec

/**
 * A [CredentialStore] for [dev.tandem.ffi.Client.open] that keeps the
 * device's access and refresh tokens encrypted with AES-256-GCM under a key
 * held by the Android Keystore, which never leaves it (not exportable; in
 * secure hardware where the device has some). The key needs no user
 * authentication, since syncing runs in the background.
 *
 * [name] tells apart the stores of several users in one app (the user id
 * does): it names the key and the file. The file, in
 * [Context.getNoBackupFilesDir], holds a format byte (1), the 12-byte IV the
 * Keystore picked at random for this save, and the ciphertext with its
 * 16-byte tag; [name] is authenticated with it, so one store's file does
 * not open as another's. It is left out of backups: restored elsewhere it
 * could not be decrypted (the key stays on the device) and would be another
 * device's tokens. A save writes a temporary file, syncs it to disk and
 * renames it over the old one, so a crash leaves the old value or the new
 * one, whole: a refresh token is single-use, so a half-written value would
 * lose the device's credentials.
 *
 * A value that can never be decrypted again (the key was deleted or
 * permanently invalidated, say by a Keystore reset, or the file is damaged
 * or is not one this class wrote) is deleted, with the key, and [load]
 * returns null: the tokens in it are lost either way, and with none the
 * engine registers the device again with a user token from the app's
 * token provider. Throwing would not help: the engine retries a failing
 * store with backoff, and the value would never become readable, so the
 * device would stay offline. A failure that may pass (the file cannot be
 * read or written, the Keystore does not answer) is
 * [TandemException.Storage] with code `credential_store`, and the value is
 * kept for the next try.
 *
 * Robolectric has no AndroidKeyStore provider, so scripts/android-check.sh
 * compiles this class against android-all (warnings as errors) but cannot
 * run it; the tests on Linux use [InMemoryCredentialStore], the same
 * interface. Its calls come from the sync engine's thread and are short
 * (one small file, one Keystore operation); calls of every instance in the
 * process are serialized.
 */
class KeystoreCredentialStore(context: Context, name: String) : CredentialStore {
    init {
        require(name.isNotEmpty()) { "a KeystoreCredentialStore needs a name, such as the user id" }
    }

    private val file = File(context.noBackupFilesDir, FILE_PREFIX + URLEncoder.encode(name, "UTF-8"))
    private val keyAlias = KEY_ALIAS_PREFIX + name
    private val associatedData = name.toByteArray(Charsets.UTF_8)

    override fun load(): ByteArray? = synchronized(lock) {
        val sealed = try {
            if (!file.exists()) return null
            file.readBytes()
        } catch (e: IOException) {
            throw failure("reading $file", e)
        }
        try {
            open(sealed)
        } catch (e: Undecryptable) {
            // Lost for good (see the class doc): the engine registers again.
            discard()
            null
        }
    }

    override fun save(credentials: ByteArray) = synchronized(lock) {
        val sealed = keystore("encrypting the credentials") {
            try {
                seal(credentials, existingKey() ?: newKey())
            } catch (e: KeyPermanentlyInvalidatedException) {
                seal(credentials, newKey())
            } catch (e: UnrecoverableKeyException) {
                seal(credentials, newKey())
            }
        }
        writeAtomically(sealed)
    }

    override fun delete() = synchronized(lock) {
        if (file.exists() && !file.delete()) throw failure("deleting $file", null)
        keystore("deleting the key") { deleteKey() }
    }

    private fun seal(plain: ByteArray, key: SecretKey): ByteArray {
        val cipher = Cipher.getInstance(TRANSFORMATION)
        // No IV given: the Keystore picks a random one for each encryption.
        cipher.init(Cipher.ENCRYPT_MODE, key)
        cipher.updateAAD(associatedData)
        val ciphertext = cipher.doFinal(plain)
        val iv = cipher.iv
        if (iv.size != IV_BYTES) throw failure("the Keystore gave a ${iv.size}-byte IV, not $IV_BYTES", null)
        return byteArrayOf(FORMAT) + iv + ciphertext
    }

    /** The value in [sealed]; [Undecryptable] if it can never be had. */
    private fun open(sealed: ByteArray): ByteArray = keystore("decrypting the credentials") {
        if (sealed.size < HEADER_BYTES + TAG_BITS / 8 || sealed[0] != FORMAT) throw Undecryptable()
        val key = try {
            existingKey()
        } catch (e: UnrecoverableKeyException) {
            throw Undecryptable()
        } ?: throw Undecryptable()
        val cipher = Cipher.getInstance(TRANSFORMATION)
        try {
            cipher.init(Cipher.DECRYPT_MODE, key, GCMParameterSpec(TAG_BITS, sealed, 1, IV_BYTES))
            cipher.updateAAD(associatedData)
            cipher.doFinal(sealed, HEADER_BYTES, sealed.size - HEADER_BYTES)
        } catch (e: KeyPermanentlyInvalidatedException) {
            throw Undecryptable()
        } catch (e: AEADBadTagException) {
            // Another key's ciphertext, or damaged bytes.
            throw Undecryptable()
        }
    }

    private fun keyStore(): KeyStore = KeyStore.getInstance(KEYSTORE).apply { load(null) }

    private fun existingKey(): SecretKey? = keyStore().getKey(keyAlias, null) as SecretKey?

    /** Deletes the key if there is one (some Android versions fail deleting none). */
    private fun deleteKey() {
        val keyStore = keyStore()
        if (keyStore.containsAlias(keyAlias)) keyStore.deleteEntry(keyAlias)
    }

    /** A new key under [keyAlias], replacing any key there. */
    private fun newKey(): SecretKey {
        val generator = KeyGenerator.getInstance(KeyProperties.KEY_ALGORITHM_AES, KEYSTORE)
        generator.init(
            KeyGenParameterSpec.Builder(keyAlias, KeyProperties.PURPOSE_ENCRYPT or KeyProperties.PURPOSE_DECRYPT)
                .setBlockModes(KeyProperties.BLOCK_MODE_GCM)
                .setEncryptionPaddings(KeyProperties.ENCRYPTION_PADDING_NONE)
                .setKeySize(256)
                .build(),
        )
        return generator.generateKey()
    }

    private fun writeAtomically(bytes: ByteArray) {
        val temp = File(file.path + ".tmp")
        try {
            FileOutputStream(temp).use { out ->
                out.write(bytes)
                out.fd.sync()
            }
            if (!temp.renameTo(file)) throw IOException("cannot rename $temp to $file")
        } catch (e: IOException) {
            temp.delete()
            throw failure("writing $file", e)
        }
    }

    /** Deletes a value that can never be decrypted, and its key. */
    private fun discard() {
        file.delete()
        try {
            deleteKey()
        } catch (e: Exception) {
            // Left behind, the key is replaced by the next save's new one.
        }
    }

    /** Runs a Keystore or cipher operation, its failures as [TandemException.Storage]. */
    private inline fun <T> keystore(doing: String, operation: () -> T): T = try {
        operation()
    } catch (e: GeneralSecurityException) {
        throw failure(doing, e)
    } catch (e: ProviderException) {
        // The Keystore service failed the operation.
        throw failure(doing, e)
    } catch (e: IOException) {
        // KeyStore.load.
        throw failure(doing, e)
    }

    private fun failure(doing: String, cause: Throwable?): TandemException {
        val error = TandemException.Storage(
            code = "credential_store",
            reason = if (cause == null) doing else "$doing: $cause",
        )
        if (cause != null) error.initCause(cause)
        return error
    }

    /** The stored value can never be decrypted: handled by [load]. */
    private class Undecryptable : Exception()

    private companion object {
        const val KEYSTORE = "AndroidKeyStore"
        const val TRANSFORMATION = "AES/GCM/NoPadding"
        const val FORMAT: Byte = 1
        const val IV_BYTES = 12
        const val TAG_BITS = 128
        const val HEADER_BYTES = 1 + IV_BYTES
        const val FILE_PREFIX = "tandem-credentials-"
        const val KEY_ALIAS_PREFIX = "dev.tandem.credentials."

        /** One lock for every instance: two stores of one name share a file and a key. */
        val lock = Any()
    }
}
