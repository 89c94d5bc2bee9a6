package qupathdouble

/**
 * TEST DOUBLE of QuPath's ImageServer (qupath-core, 0.6.0): getPath, an id, not a file (ImageServer.java:69),
 * getURIs (:80) and getPixelCalibration (PathImage.java:57).
 */
class Server {
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
