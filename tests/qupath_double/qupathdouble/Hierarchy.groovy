package qupathdouble

/**
 * TEST DOUBLE of QuPath's PathObjectHierarchy (qupath-core, 0.6.0): getSelectionModel (PathObjectHierarchy
 * .java:161) and fireObjectsChangedEvent (:1092), recorded.
 */
class Hierarchy {
    private final SelectionModel selectionModel = new SelectionModel()

    SelectionModel getSelectionModel() { selectionModel }

    void fireObjectsChangedEvent(Object source, Collection objects) {
        QuPathDouble.calls << "fireObjectsChangedEvent ${objects.size()}".toString()
    }
}
