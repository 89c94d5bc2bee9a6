package qupath.fx.utils

import javafx.scene.control.Tab
import qupathdouble.QuPathDouble

/** TEST DOUBLE of qupath-fxtras' FXUtils: records which tabs were made undockable. */
class FXUtils {
    static void makeTabUndockable(Tab tab) {
        QuPathDouble.calls << "makeTabUndockable ${tab.text}".toString()
    }
}
