package qupathdouble

/** TEST DOUBLE of QuPath's PathObject: only what the glue calls (see QuPathDouble). */
class PathObject {
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
        QuPathDouble.calls << 'setDescription'
        description = text
    }
}
