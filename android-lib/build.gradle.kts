// Tandem for Android: the generated Kotlin bindings (Android flavour), the
// Kotlin conveniences, and libtandem_ffi.so for each ABI.
//
// Sources:
//   src/main/kotlin/      plain Kotlin (Flows, InMemoryCredentialStore), which
//                         the host-JVM tests (jvm-test) compile too
//   src/android/kotlin/   Android-only code (KeystoreCredentialStore)
//
// Generated inputs, from scripts/build-android.sh (never edited by hand):
//   src/generated/kotlin/   the bindings (scripts/gen-bindings.sh)
//   src/main/jniLibs/<abi>/libtandem_ffi.so   (cargo-ndk)
plugins {
    id("com.android.library")
    id("org.jetbrains.kotlin.android")
    `maven-publish`
}

group = "dev.tandem"
version = "0.1.0"

android {
    namespace = "dev.tandem"
    compileSdk = 35

    defaultConfig {
        // The oldest Android the libraries are built for (cargo-ndk
        // --platform in scripts/build-android.sh); keep the two equal.
        minSdk = 24
        consumerProguardFiles("consumer-rules.pro")
    }

    sourceSets["main"].java.srcDirs("src/main/kotlin", "src/android/kotlin", "src/generated/kotlin")

    compileOptions {
        sourceCompatibility = JavaVersion.VERSION_17
        targetCompatibility = JavaVersion.VERSION_17
    }

    publishing {
        singleVariant("release") {
            withSourcesJar()
        }
    }
}

kotlin {
    compilerOptions {
        jvmTarget.set(org.jetbrains.kotlin.gradle.dsl.JvmTarget.JVM_17)
        allWarningsAsErrors.set(true)
    }
}

dependencies {
    // The generated bindings call the library through JNA; the AAR carries
    // JNA's native dispatch library for each ABI.
    implementation("net.java.dev.jna:jna:5.17.0@aar")
    // The Flow conveniences are public API, so coroutines are too.
    api("org.jetbrains.kotlinx:kotlinx-coroutines-android:1.10.2")
    // @RequiresApi in the Android flavour of the bindings.
    implementation("androidx.annotation:annotation:1.9.1")
}

publishing {
    publications {
        register<MavenPublication>("release") {
            artifactId = "tandem-android"
            afterEvaluate {
                from(components["release"])
            }
        }
    }
}
