package qupathdouble

/** TEST DOUBLE of QuPath's RotatedImageServer, a TransformingImageServer (RotatedImageServer.java:40, 0.6.0). */
class RotatedImageServer extends TransformingImageServer {
    RotatedImageServer(Server wrapped) { super(wrapped) }
}
