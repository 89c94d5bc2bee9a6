package qupath.lib.gui

import javafx.collections.FXCollections
import javafx.collections.ObservableList
import javafx.scene.control.MenuItem
import javafx.scene.control.TabPane
import qupathdouble.QuPathDouble

/**
 * TEST DOUBLE of QuPath's main window (QuPath cannot be installed on build machines): only the calls the
 * glue makes, each recorded in QuPathDouble.calls. The image data is whatever a test puts in `imageData`.
 */
class QuPathGUI {
    private static QuPathGUI instance

    final TabPane analysisTabPane = new TabPane()
    final ObservableList viewers = FXCollections.observableArrayList()
    final Map<String, MenuItem> commands = [:]
    Object imageData

    static QuPathGUI getInstance() {
        if (instance == null) {
            instance = new QuPathGUI()
        }
        return instance
    }

    TabPane getAnalysisTabPane() {
        QuPathDouble.calls << 'getAnalysisTabPane'
        return analysisTabPane
    }

    ObservableList getAllViewers() {
        QuPathDouble.calls << 'getAllViewers'
        return viewers
    }

    Object getImageData() {
        QuPathDouble.calls << 'getImageData'
        return imageData
    }

    /** Like QuPath's: the menu item for a "Menu>Submenu>Name" path, replacing one of the same path. */
    MenuItem installCommand(String menuPath, Runnable runnable) {
        QuPathDouble.calls << "installCommand ${menuPath}".toString()
        MenuItem item = new MenuItem(menuPath.substring(menuPath.lastIndexOf('>') + 1))
        item.onAction = { runnable.run() } as javafx.event.EventHandler
        commands[menuPath] = item
        return item
    }
}
