package dev.tandem

import dev.tandem.ffi.DocKey
import dev.tandem.ffi.GuardOutcome
import dev.tandem.ffi.RoleInfo
import dev.tandem.ffi.TandemException
import kotlinx.coroutines.Dispatchers
import kotlinx.coroutines.async
import kotlinx.coroutines.awaitAll
import kotlinx.coroutines.channels.Channel
import kotlinx.coroutines.flow.first
import kotlinx.coroutines.launch
import kotlinx.coroutines.runBlocking
import kotlinx.coroutines.withTimeout
import kotlin.test.AfterTest
import kotlin.test.Test
import kotlin.test.assertEquals
import kotlin.test.assertFailsWith
import kotlin.test.assertNotNull
import kotlin.test.assertNull
import kotlin.test.assertTrue

/** Roles, fencing, the duplicate guard and the device registry, driven from Kotlin against a real server. */
class CoordinationTest {
    private val server = TandemServer()

    @AfterTest
    fun stopServer() = server.close()

    @Test
    fun `claim, observe and release a role across two devices`() = runBlocking {
        val phone = openClient("alice", "phone")
        val tablet = openClient("alice", "tablet")
        server.connect(phone)
        server.connect(tablet)

        val heard = Channel<RoleInfo>(Channel.UNLIMITED)
        val watcher = launch(Dispatchers.Default) { tablet.roleUpdates("auto-responder").collect { heard.send(it) } }

        val claimed = phone.claimRole("auto-responder", 0)
        assertTrue(claimed.isSelf)
        assertEquals(1uL, claimed.epoch)
        assertEquals("phone", claimed.holderName)
        val fence = assertNotNull(phone.currentFence("auto-responder"))
        assertEquals(1uL, fence.epoch)

        // The tablet hears the phone took the role.
        withTimeout(DELIVERY_MS) {
            var role = heard.receive()
            while (role.holderName != "phone") role = heard.receive()
            assertEquals(false, role.isSelf)
        }
        val second = tablet.claimRole("auto-responder", 0)
        assertEquals("phone", second.holderName)
        assertNull(tablet.currentFence("auto-responder"))

        // The phone releases it: the tablet, a candidate, takes over and
        // its Flow says so.
        val released = phone.releaseRole("auto-responder")
        assertEquals(2uL, released.epoch)
        withTimeout(DELIVERY_MS) {
            var role = heard.receive()
            while (!role.isSelf) role = heard.receive()
            assertEquals(2uL, role.epoch)
        }
        assertEquals(2uL, tablet.currentFence("auto-responder")?.epoch)

        // The phone's old epoch no longer works.
        assertFailsWith<TandemException.RoleLost> { phone.guardFenced("replies", "hello", null, fence) }
        watcher.cancel()
        watcher.join()
        assertEquals(0uL, tablet.activeSubscriptions())
        phone.shutdown()
        tablet.shutdown()
    }

    @Test
    fun `the guard answers first once, then duplicate`() = runBlocking {
        val devices = List(4) { openClient("bob", "device-$it") }
        devices.forEach { server.connect(it) }
        val answers = devices.map { client ->
            async(Dispatchers.Default) { client.guard("conversation:1", " Thanks,  on my way! ", null) }
        }.awaitAll()
        assertEquals(1, answers.count { it == GuardOutcome.FIRST }, answers.toString())
        assertEquals(3, answers.count { it == GuardOutcome.DUPLICATE })
        // The same content normalized the same way is a duplicate; other
        // content in the same scope is a first.
        assertEquals(GuardOutcome.DUPLICATE, devices[0].guard("conversation:1", "Thanks, on my way!", 5_000uL))
        assertEquals(GuardOutcome.FIRST, devices[0].guard("conversation:1", "See you", 5_000uL))
        devices.forEach { it.shutdown() }
    }

    @Test
    fun `a fenced write by the holder is accepted and devices list each other`() = runBlocking {
        val phone = openClient("carol", "phone")
        val laptop = openClient("carol", "laptop")
        server.connect(phone)
        server.connect(laptop)
        phone.claimRole("responder", 5)
        val fence = assertNotNull(phone.currentFence("responder"))
        phone.putFenced(DocKey("answers", "a1"), """{"text":"hi"}""", fence)
        server.connect(phone)
        assertEquals(0uL, phone.status().failed)

        val devices = withTimeout(DELIVERY_MS) {
            laptop.deviceUpdates().first { list -> list.count { it.online } == 2 }
        }
        assertEquals(listOf("laptop", "phone"), devices.map { it.name })
        assertTrue(devices.single { it.name == "laptop" }.isSelf)
        phone.shutdown()
        laptop.shutdown()
    }
}
