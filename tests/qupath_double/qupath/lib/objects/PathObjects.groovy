package qupath.lib.objects

import qupathdouble.PathTileObject
import qupathdouble.Roi

/**
 * TEST DOUBLE of QuPath's PathObjects factory (qupath-core .../objects/PathObjects.java in QuPath 0.6.0, 0.7.0 the
 * same): createTileObject(roi, pathClass) since v0.5.0 (l. 210) gives a PathTileObject with an empty measurement
 * list; a null ROI is refused as QuPath refuses it (l. 192-193).
 */
class PathObjects {
    static PathTileObject createTileObject(Roi roi, Object pathClass) {
        if (roi == null) {
            throw new IllegalArgumentException('A ROI is required to create a detection object!')
        }
        return new PathTileObject(roi, pathClass)
    }
}
