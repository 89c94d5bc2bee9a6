package qupathdouble

/** TEST DOUBLE of QuPath's SelectionModel: only what the glue calls (see QuPathDouble). */
class SelectionModel {
    final Set selected = new LinkedHashSet()

    Set getSelectedObjects() { selected }
}
