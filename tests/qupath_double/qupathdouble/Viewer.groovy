package qupathdouble

import javafx.scene.layout.Pane

/**
 * TEST DOUBLE of QuPath's QuPathViewer: getView(), the Pane the viewer draws in (QuPathViewer.java:284, 0.6.0),
 * where QuPath's own right-click handler sits (ViewerManager.java 1465-1478).
 */
class Viewer {
    private final Pane view = new Pane()

    Pane getView() { view }
}
