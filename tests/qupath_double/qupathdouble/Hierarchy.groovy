package qupathdouble

/** TEST DOUBLE of QuPath's Hierarchy: only what the glue calls (see QuPathDouble). */
class Hierarchy {
    private final SelectionModel selectionModel = new SelectionModel()

    SelectionModel getSelectionModel() { selectionModel }

    void fireObjectsChangedEvent(Object source, Collection objects) {
        QuPathDouble.calls << "fireObjectsChangedEvent ${objects.size()}".toString()
    }
}
