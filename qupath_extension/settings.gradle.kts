// Optional: builds the panel as a QuPath extension jar with JeroMQ inside (`gradle shadowJar`, needs internet
// for QuPath's Maven repository and the Gradle plugin portal). Not needed for `antoni-bridge qupath install`.
pluginManagement {
    repositories {
        gradlePluginPortal()
        maven { url = uri("https://maven.scijava.org/content/repositories/releases") }
    }
}

qupath {
    version = "0.6.0" // a jar built for 0.6 (Java 21) also loads in 0.7
}

plugins {
    id("io.github.qupath.qupath-extension-settings") version "0.2.1"
}

rootProject.name = "qupath-extension-antoni"
