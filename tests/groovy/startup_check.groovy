// Runs the installed startup script inside the QuPath double as QuPath does (argument 1: "startup", from the
// startupScriptPath preference at QuPath's start, or "editor", from the script editor with argument 2 the
// script file): JeroMQ only from <userPath>/extensions, the panel's sources from where the script says.
// A further argument in "startup" mode: a script to run from the editor afterwards (the self-test), whose
// output is kept. Prints the thread it ran on, the tabs, the commands it added and that output as JSON.
import javafx.scene.control.Label
import qupath.lib.gui.QuPathGUI

Fx.start()
def qupath = QuPathGUI.getInstance()
Map seen = [:]
if (args[0] == 'editor') {
    seen.thread = qupath.runFromEditor(new File(args[1]))
} else {
    Fx.run { qupath.maybeRunStartupScript() }
    Fx.waitFor('the startup script', 60) { !qupath.analysisTabPane.tabs.isEmpty() }
    if (args.length > 1) {
        PrintStream stdout = System.out
        ByteArrayOutputStream printed = new ByteArrayOutputStream()
        System.out = new PrintStream(printed, true, 'UTF-8')
        try {
            qupath.runFromEditor(new File(args[1]))
        } finally {
            System.out = stdout
        }
        seen.printed = printed.toString('UTF-8')
    }
}
seen += Fx.run {
    List tabs = qupath.analysisTabPane.tabs.collect {
        [text: it.text, note: it.content instanceof Label ? it.content.text : null]
    }
    [tabs: tabs, commands: qupath.commands.keySet().toList(),
     shortcut: qupath.commands['Extensions>ANTONI>Ask ANTONI about this region']?.accelerator?.name]
} as Map
Fx.run { qupath.analysisTabPane.tabs.each { it.userData?.close() } }
println(groovy.json.JsonOutput.toJson(seen))
Fx.exit(0)
