package qupathdouble

import javafx.scene.layout.Pane
import org.locationtech.jts.geom.Geometry
import org.locationtech.jts.io.WKTReader

/**
 * TEST DOUBLE of the QuPath objects the glue reads and writes (QuPath cannot be installed on build
 * machines): viewers, image data, image servers, the hierarchy and its selection, annotations and their ROIs.
 * Only the methods the glue calls exist, with QuPath's names; calls that change QuPath are recorded in `calls`.
 * Geometry is real JTS, as in QuPath.
 */
class QuPathDouble {
    static final List<String> calls = Collections.synchronizedList([])

    /** An image served from one file, as QuPath shows an ordinary slide. */
    static ImageData image(String uri, String serverPath = null, double micronsPerPixel = Double.NaN) {
        new ImageData(new Server([new URI(uri)], serverPath ?: "OpenslideImageServer: ${uri}", micronsPerPixel))
    }

    static PathObject annotation(String wkt, String name = null, String roiName = 'Polygon') {
        new PathObject(name, true, new Roi(new WKTReader().read(wkt), roiName))
    }

    static PathObject detection(String wkt) {
        new PathObject(null, false, new Roi(new WKTReader().read(wkt), 'Polygon'))
    }

    static class Viewer {
        private final Pane view = new Pane()

        Pane getView() { view }
    }

    static class ImageData {
        private final Server server
        private final Hierarchy hierarchy = new Hierarchy()

        ImageData(Server server) { this.server = server }

        Server getServer() { server }

        Hierarchy getHierarchy() { hierarchy }
    }

    static class Server {
        private final List<URI> uris
        private final String path
        private final double micronsPerPixel

        Server(List<URI> uris, String path, double micronsPerPixel) {
            this.uris = uris
            this.path = path
            this.micronsPerPixel = micronsPerPixel
        }

        Collection<URI> getURIs() { uris }

        String getPath() { path }

        PixelCalibration getPixelCalibration() { new PixelCalibration(micronsPerPixel) }
    }

    /** QuPath's base class of rotated, cropped and other transformed views keeps this simple name. */
    static abstract class TransformingImageServer extends Server {
        TransformingImageServer(Server wrapped) { super(wrapped.getURIs() as List, wrapped.getPath(), Double.NaN) }
    }

    static class RotatedImageServer extends TransformingImageServer {
        RotatedImageServer(Server wrapped) { super(wrapped) }
    }

    static class PixelCalibration {
        private final double width

        PixelCalibration(double width) { this.width = width }

        double getPixelWidthMicrons() { width }
    }

    static class Hierarchy {
        private final SelectionModel selectionModel = new SelectionModel()

        SelectionModel getSelectionModel() { selectionModel }

        void fireObjectsChangedEvent(Object source, Collection objects) {
            calls << "fireObjectsChangedEvent ${objects.size()}".toString()
        }
    }

    static class SelectionModel {
        final Set selected = new LinkedHashSet()

        Set getSelectedObjects() { selected }
    }

    static class PathObject {
        private final UUID id = UUID.randomUUID()
        private final String name
        private final boolean annotation
        private final Roi roi
        private final Map<String, String> metadata = [:]
        private String description

        PathObject(String name, boolean annotation, Roi roi) {
            this.name = name
            this.annotation = annotation
            this.roi = roi
        }

        UUID getID() { id }

        String getName() { name }

        Object getPathClass() { null }

        boolean isAnnotation() { annotation }

        Roi getROI() { roi }

        Map<String, String> getMetadata() { metadata }

        String getDescription() { description }

        void setDescription(String text) {
            calls << 'setDescription'
            description = text
        }
    }

    static class Roi {
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
}
