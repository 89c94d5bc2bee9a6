package qupathdouble

import org.locationtech.jts.geom.Geometry

/**
 * TEST DOUBLE of QuPath's ROIs. getNumPoints() is per ROI type as in QuPath 0.6.0: 4 for ellipses and
 * rectangles (EllipseROI.java:121, RectangleROI.java:81), 2 for lines (LineROI.java:108), the geometry's
 * vertices otherwise (AbstractPathROI.java:186, PointsROI.java:196); getGeometry() keeps holes and, for an
 * ellipse, is its many-vertex polygon.
 */
class Roi {
    private final Geometry geometry
    private final String roiName

    Roi(Geometry geometry, String roiName) {
        this.geometry = geometry
        this.roiName = roiName
    }

    Geometry getGeometry() { geometry }

    boolean isArea() { geometry.getDimension() == 2 }

    String getRoiName() { roiName }

    int getNumPoints() {
        switch (roiName) {
            case ['Ellipse', 'Rectangle']:
                return 4
            case 'Line':
                return 2
            default:
                return geometry.getNumPoints()
        }
    }
}
