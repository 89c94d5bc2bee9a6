package antonibridge

import qupath.lib.gui.QuPathGUI
import qupath.lib.gui.extensions.QuPathExtension

/**
 * The panel as a QuPath extension, for the jar the optional Gradle build makes (JeroMQ bundled): it installs
 * the same glue as startup.groovy. Use the jar or the startup script, not both (the second replaces the first).
 */
class AntoniBridgeExtension implements QuPathExtension {
    private boolean installed

    @Override
    void installExtension(QuPathGUI qupath) {
        if (!installed) {
            installed = true
            QuPathGlue.install(qupath)
        }
    }

    @Override
    String getName() { 'ANTONI chat' }

    @Override
    String getDescription() {
        'Ask the local antoni-bridge daemon (ANTONI-Alpha) about the open slide or the selected annotations.'
    }
}
