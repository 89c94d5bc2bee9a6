// Runs an installed startup script (argument 1) as QuPath does at startup, on the JavaFX thread, inside the
// QuPath double; the panel's sources are not on the class path, so they come from where the script says.
// Prints the tabs and commands it added as JSON.
import javafx.scene.control.Label
import qupath.lib.gui.QuPathGUI

Fx.start()
def qupath = QuPathGUI.getInstance()
Script script = new GroovyShell(getClass().classLoader).parse(new File(args[0]))
Fx.run { script.run() }
Map seen = Fx.run {
    List tabs = qupath.analysisTabPane.tabs.collect {
        [text: it.text, note: it.content instanceof Label ? it.content.text : null]
    }
    [tabs: tabs, commands: qupath.commands.keySet().toList()]
} as Map
Fx.run { qupath.analysisTabPane.tabs.each { it.userData?.close() } }
println(groovy.json.JsonOutput.toJson(seen))
Fx.exit(0)
