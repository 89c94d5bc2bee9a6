// The extension jar: `gradle shadowJar` writes build/libs/qupath-extension-antoni-<version>-all.jar, the one
// to drop into QuPath (the jar without "-all" lacks JeroMQ). See docs/qupath.md.
plugins {
    groovy
    id("com.gradleup.shadow") version "8.3.5"
    id("qupath-conventions")
}

qupathExtension {
    name = "qupath-extension-antoni"
    group = "io.github.antonibridge"
    version = "0.1.0"
    description = "Chat with ANTONI-Alpha about slides and regions through the local antoni-bridge daemon"
    automaticModule = "io.github.antonibridge.qupath"
}

dependencies {
    implementation("org.zeromq:jeromq:0.6.0") // bundled into the -all jar
    shadow(libs.bundles.qupath) // QuPath's own libraries (Gson, JTS, JavaFX, Groovy) come from QuPath
    shadow(libs.bundles.logging)
    shadow(libs.qupath.fxtras)
    shadow(libs.bundles.groovy)
}

sourceSets {
    main {
        groovy.setSrcDirs(listOf("src", "extension")) // the same sources the startup script compiles
        resources.setSrcDirs(listOf("extension-resources"))
    }
}
