package qupathdouble

/** TEST DOUBLE of QuPath's ImageData: only what the glue calls (see QuPathDouble). */
class ImageData {
    private final Server server
    private final Hierarchy hierarchy = new Hierarchy()

    ImageData(Server server) { this.server = server }

    Server getServer() { server }

    Hierarchy getHierarchy() { hierarchy }
}
