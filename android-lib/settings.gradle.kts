// The Android library as a stand-alone Gradle build (Gradle 8.9 or newer):
//   scripts/build-android.sh              jniLibs + generated bindings, then the AAR
//   gradle assembleRelease                the AAR, build/outputs/aar/
//   gradle publishToMavenLocal            dev.tandem:tandem-android:<version>
pluginManagement {
    repositories {
        google()
        mavenCentral()
        gradlePluginPortal()
    }
    plugins {
        id("com.android.library") version "8.7.3"
        id("org.jetbrains.kotlin.android") version "2.2.21"
    }
}

dependencyResolutionManagement {
    repositories {
        google()
        mavenCentral()
    }
}

rootProject.name = "tandem-android"
