// The test classes of android-lib/jvm-test, run unchanged under Robolectric.
//
// JUnit 4 has no setting for a default runner and the shared test sources
// carry no @RunWith (the host-JVM harness runs them with JUnit 5), so this
// suite gives each of them a RobolectricTestRunner. It finds them the way
// surefire would, by name (*Test) among the compiled test classes, so a test
// class added to jvm-test runs here too without being listed anywhere.
// Which SDK they run at is Robolectric's configuration: robolectric.properties
// and -Drobolectric.enabledSdks (pom.xml).
package dev.tandem.robolectric

import org.junit.runner.RunWith
import org.junit.runners.Suite
import org.junit.runners.model.InitializationError
import org.robolectric.RobolectricTestRunner
import java.io.File

/** Every `*Test` class compiled beside [suite], each with a [RobolectricTestRunner]. */
class RobolectricSuite(suite: Class<*>) :
    Suite(suite, testClassesBeside(suite).map { RobolectricTestRunner(it) })

private fun testClassesBeside(suite: Class<*>): List<Class<*>> {
    val root = File(suite.protectionDomain.codeSource.location.toURI())
    if (!root.isDirectory) throw InitializationError("the test classes are not a directory: $root")
    val classes = root.walk()
        .filter { it.isFile && it.name.endsWith("Test.class") && '$' !in it.name }
        .map { it.relativeTo(root).path.removeSuffix(".class").replace(File.separatorChar, '.') }
        .sorted()
        .map { Class.forName(it, false, suite.classLoader) }
        .filter { it != suite }
        .toList()
    if (classes.isEmpty()) throw InitializationError("no *Test classes under $root")
    return classes
}

/** The one class surefire runs (pom.xml includes only this one). */
@RunWith(RobolectricSuite::class)
class JvmTestsUnderRobolectric
