package qupathdouble

/**
 * TEST DOUBLE of QuPath's PathObject (qupath-core .../objects/PathObject.java, 0.6.0): id, name, class, ROI,
 * metadata, display colour (getColor/setColor(Integer), l. 895-911: a packed RGB or null) and measurement list
 * (made when first asked for, l. 175-179), but no description: that exists on annotations only.
 */
class PathObject {
    private final UUID id = UUID.randomUUID()
    private final String name
    private final Roi roi
    private final Map<String, String> metadata = [:]
    private Object pathClass
    private Integer color
    private MeasurementList measurements

    PathObject(String name, Roi roi) {
        this.name = name
        this.roi = roi
    }

    UUID getID() { id }

    String getName() { name }

    Object getPathClass() { pathClass }

    void setPathClass(Object pathClass) { this.pathClass = pathClass }

    boolean isAnnotation() { false }

    boolean isDetection() { false }

    boolean isTile() { false }

    Integer getColor() { color }

    void setColor(Integer color) { this.color = color }

    synchronized MeasurementList getMeasurementList() {
        if (measurements == null) {
            measurements = new MeasurementList()
        }
        return measurements
    }

    Roi getROI() { roi }

    /** PathObject.getMetadata(), since 0.5.0: a live, modifiable map of strings. */
    Map<String, String> getMetadata() { metadata }
}
