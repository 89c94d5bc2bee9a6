package qupath.lib.roi

import org.locationtech.jts.geom.Envelope
import org.locationtech.jts.geom.GeometryFactory
import qupathdouble.Roi

/**
 * TEST DOUBLE of QuPath's ROIs factory (qupath-core .../roi/ROIs.java in QuPath 0.6.0): createRectangleROI(x, y,
 * width, height) on the default plane, new in v0.6.0 (l. 94), a RectangleROI (its geometry the box).
 */
class ROIs {
    private static final GeometryFactory GEOMETRY = new GeometryFactory()

    static Roi createRectangleROI(double x, double y, double width, double height) {
        return new Roi(GEOMETRY.toGeometry(new Envelope(x, x + width, y, y + height)), 'Rectangle')
    }
}
