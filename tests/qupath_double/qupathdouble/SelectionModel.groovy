package qupathdouble

/**
 * TEST DOUBLE of QuPath's PathObjectSelectionModel: getSelectedObjects() is an unmodifiable live view
 * (PathObjectSelectionModel.java 51, 87 in QuPath 0.6.0); tests select through setSelectedObjects.
 */
class SelectionModel {
    private final Set selected = new LinkedHashSet()
    private final Set view = Collections.unmodifiableSet(selected)

    Set getSelectedObjects() { view }

    /** PathObjectSelectionModel.java:62. */
    void setSelectedObjects(Collection objects, Object primary) {
        selected.clear()
        selected.addAll(objects)
    }
}
