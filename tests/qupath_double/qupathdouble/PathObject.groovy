package qupathdouble

/**
 * TEST DOUBLE of QuPath's PathObject (qupath-core .../objects/PathObject.java, 0.6.0): id, name, class, ROI
 * and metadata, but no description: that exists on annotations only (PathAnnotationObject).
 */
class PathObject {
    private final UUID id = UUID.randomUUID()
    private final String name
    private final Roi roi
    private final Map<String, String> metadata = [:]

    PathObject(String name, Roi roi) {
        this.name = name
        this.roi = roi
    }

    UUID getID() { id }

    String getName() { name }

    Object getPathClass() { null }

    boolean isAnnotation() { false }

    Roi getROI() { roi }

    /** PathObject.getMetadata(), since 0.5.0: a live, modifiable map of strings. */
    Map<String, String> getMetadata() { metadata }
}
