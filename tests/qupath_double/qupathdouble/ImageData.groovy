package qupathdouble

/**
 * TEST DOUBLE of QuPath's ImageData: its server, hierarchy and properties (ImageData.java:487 in QuPath 0.6.0:
 * setProperty keeps any value and marks the image changed).
 */
class ImageData {
    private final Server server
    private final Hierarchy hierarchy = new Hierarchy()
    private final Map<String, Object> values = [:]
    boolean changed

    ImageData(Server server) { this.server = server }

    Server getServer() { server }

    Hierarchy getHierarchy() { hierarchy }

    /** QuPath's returns the old value; a Groovy class must return void here (GroovyObject.setProperty). */
    void setProperty(String key, Object value) {
        QuPathDouble.calls << "setProperty ${key}".toString()
        Object old = values.put(key, value)
        changed = changed || old != value
    }

    /** ImageData.getProperties(): read-only here (getProperty(String) would clash with Groovy's own). */
    Map<String, Object> getProperties() { Collections.unmodifiableMap(values) }
}
