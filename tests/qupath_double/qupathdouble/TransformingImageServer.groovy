package qupathdouble

/**
 * TEST DOUBLE of QuPath's TransformingImageServer, the base class of rotated, cropped and other transformed
 * views of a file: the glue recognises it by this simple name. It reports the wrapped file's URIs, as QuPath's
 * does (TransformingImageServer.java 42, 61 in QuPath 0.6.0).
 */
abstract class TransformingImageServer extends Server {
    TransformingImageServer(Server wrapped) { super(wrapped.getURIs() as List, wrapped.getPath(), Double.NaN) }
}
