package qupathdouble

/**
 * TEST DOUBLE of QuPath's PathObjectHierarchy (qupath-core, 0.6.0): getSelectionModel (PathObjectHierarchy
 * .java:161), fireObjectsChangedEvent (:1092), addObjects (540-556: one change event for all), removeObjects
 * (414: one event; objects not in the hierarchy are skipped) and getTileObjects (616), recorded. The double keeps
 * its objects in a flat list (QuPath nests them by ROI, which the glue does not rely on).
 */
class Hierarchy {
    private final SelectionModel selectionModel = new SelectionModel()
    private final List objects = []

    SelectionModel getSelectionModel() { selectionModel }

    void fireObjectsChangedEvent(Object source, Collection objects) {
        QuPathDouble.calls << "fireObjectsChangedEvent ${objects.size()}".toString()
    }

    synchronized boolean addObjects(Collection pathObjects) {
        QuPathDouble.calls << "addObjects ${pathObjects.size()}".toString()
        return objects.addAll(pathObjects)
    }

    synchronized void removeObjects(Collection pathObjects, boolean keepChildren) {
        QuPathDouble.calls << "removeObjects ${pathObjects.size()}".toString()
        objects.removeAll(pathObjects)
    }

    synchronized Collection getTileObjects() { objects.findAll { it.isTile() } }
}
