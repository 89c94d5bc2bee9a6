package qupathdouble

import javafx.scene.layout.Pane

/** TEST DOUBLE of QuPath's Viewer: only what the glue calls (see QuPathDouble). */
class Viewer {
    private final Pane view = new Pane()

    Pane getView() { view }
}
