package qupathdouble

/** TEST DOUBLE of QuPath's RotatedImageServer: only what the glue calls (see QuPathDouble). */
class RotatedImageServer extends TransformingImageServer {
    RotatedImageServer(Server wrapped) { super(wrapped) }
}
