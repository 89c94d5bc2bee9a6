package qupath.fx.utils

import javafx.scene.Scene
import javafx.scene.control.ContextMenu
import javafx.scene.control.MenuItem
import javafx.scene.control.Tab
import javafx.scene.layout.BorderPane
import javafx.stage.Stage
import qupathdouble.QuPathDouble

/**
 * TEST DOUBLE of qupath-fxtras' FXUtils.makeTabUndockable (FXUtils.java, qupath-fxtras 0.2): a context menu
 * "Undock tab" that takes the tab out of its TabPane and shows its content in a Stage of its own; closing the
 * Stage puts the tab back.
 */
class FXUtils {
    static void makeTabUndockable(Tab tab) {
        QuPathDouble.calls << "makeTabUndockable ${tab.text}".toString()
        MenuItem item = new MenuItem('Undock tab')
        tab.contextMenu = new ContextMenu(item)
        item.onAction = { undock(tab) } as javafx.event.EventHandler
    }

    private static void undock(Tab tab) {
        def tabPane = tab.tabPane
        tabPane.tabs.remove(tab)
        Stage stage = new Stage()
        stage.initOwner(tabPane.scene?.window)
        stage.title = tab.text
        def content = tab.content
        tab.content = null
        stage.scene = new Scene(new BorderPane(content), 400, 600)
        stage.onCloseRequest = {
            tab.content = content
            tabPane.tabs.add(tab)
        } as javafx.event.EventHandler
        stage.show()
    }
}
