package qupathdouble

import org.locationtech.jts.geom.Geometry

/** TEST DOUBLE of QuPath's Roi: only what the glue calls (see QuPathDouble). */
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

    int getNumPoints() { geometry.getNumPoints() }
}
