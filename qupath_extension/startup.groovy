// guiscript=true (QuPath's script editor runs a script on the JavaFX thread only when its first line says so)
// antoni-bridge: the ANTONI chat panel for QuPath 0.6 and 0.7.
// `antoni-bridge qupath install` registers this file as QuPath's startup script (Edit > Preferences > General >
// Startup script path); it can also be run once from the script editor. It compiles the panel's Groovy sources
// and adds the panel to the analysis pane. Nothing here needs an internet connection.
import javafx.scene.control.Label
import javafx.scene.control.Tab
import qupath.lib.gui.QuPathGUI

// The folder holding the panel's sources (antonibridge/*.groovy); the installer writes the real one here.
File sources = new File(System.getProperty('user.home'), 'QuPath/v0.6/antoni-bridge')

def qupath = QuPathGUI.getInstance()
try {
    Class.forName('org.zeromq.ZMQ', false, getClass().classLoader)
} catch (ClassNotFoundException ignored) {
    // Without JeroMQ the panel cannot talk to the daemon: say so where the panel would be.
    def note = new Label('The ANTONI panel needs the JeroMQ jar in QuPath\'s extensions folder. ' +
            'Run `antoni-bridge qupath install`, then restart QuPath.')
    note.wrapText = true
    qupath.getAnalysisTabPane().getTabs().add(new Tab('ANTONI', note))
    return
}
def loader = new GroovyClassLoader(getClass().classLoader)
loader.addClasspath(sources.path)
loader.loadClass('antonibridge.QuPathGlue').install(qupath)
// For scripts (the panel's classes are not on their class path): AntoniBridge.ask(imageData, annotation, question)
System.getProperties().put('antonibridge.AntoniBridge', loader.loadClass('antonibridge.AntoniBridge'))
