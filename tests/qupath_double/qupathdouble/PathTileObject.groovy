package qupathdouble

/**
 * TEST DOUBLE of QuPath's PathTileObject (qupath-core .../objects/PathTileObject.java in QuPath 0.6.0): a detection
 * whose ROI is a tile, not a structure; isTile() and isDetection() are true (PathObject.java 527, 573).
 */
class PathTileObject extends PathObject {
    PathTileObject(Roi roi, Object pathClass) {
        super(null, roi)
        setPathClass(pathClass)
    }

    @Override
    boolean isDetection() { true }

    @Override
    boolean isTile() { true }
}
