// guiscript=true (QuPath's script editor runs a script on the JavaFX thread only when its first line says so)
// antoni-bridge self-test: run it from QuPath's script editor (or Extensions > ANTONI > ANTONI self-test) with a
// slide open and an annotation selected. It tries every QuPath call the ANTONI panel makes, prints one report
// to paste into a bug report, and leaves nothing in the image.
import qupath.lib.gui.QuPathGUI

def tab = QuPathGUI.getInstance().getAnalysisTabPane().getTabs().find { it.id == 'antoni-bridge-chat' }
if (tab?.userData == null) {
    println('ANTONI self-test: the ANTONI panel is not running in this QuPath (no ANTONI tab, or it is undocked). ' +
            'Run `antoni-bridge qupath install`, restart QuPath, and see View > Show log for errors.')
    return
}
println(tab.userData.glue.showSelfTest())
