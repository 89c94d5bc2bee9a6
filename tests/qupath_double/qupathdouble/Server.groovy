package qupathdouble

/** TEST DOUBLE of QuPath's Server: only what the glue calls (see QuPathDouble). */
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
