package qupathdouble

import org.locationtech.jts.geom.Geometry
import org.locationtech.jts.io.WKTReader

/**
 * TEST DOUBLE of the QuPath objects the glue reads and writes (QuPath cannot be installed on build
 * machines): viewers, image data, image servers, the hierarchy and its selection, annotations and their ROIs.
 * Only the methods the glue calls exist, with QuPath's names and behaviour (each class names the QuPath source
 * lines it models); calls that change QuPath are recorded in `calls`. Geometry is real JTS, as in QuPath.
 */
class QuPathDouble {
    static final List<String> calls = Collections.synchronizedList([])

    /** An image served from one file, as QuPath shows an ordinary slide. */
    static ImageData image(String uri, String serverPath = null, double micronsPerPixel = Double.NaN) {
        new ImageData(new Server([new URI(uri)], serverPath ?: "OpenslideImageServer: ${uri}", micronsPerPixel))
    }

    /** An annotation of a shape given as WKT or as a JTS geometry. */
    static PathAnnotationObject annotation(Object shape, String name = null, String roiName = 'Polygon') {
        Geometry geometry = shape instanceof Geometry ? (Geometry) shape : new WKTReader().read(shape as String)
        new PathAnnotationObject(name, new Roi(geometry, roiName))
    }

    static PathObject detection(String wkt) {
        new PathObject(null, new Roi(new WKTReader().read(wkt), 'Polygon'))
    }
}
