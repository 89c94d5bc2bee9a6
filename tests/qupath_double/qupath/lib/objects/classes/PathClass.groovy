package qupath.lib.objects.classes

/**
 * TEST DOUBLE of QuPath's PathClass (qupath-core .../objects/classes/PathClass.java in QuPath 0.6.0): one cached
 * instance per name (getInstance(name, color), l. 636 and 668-700: the colour is used only when the instance is
 * first made), names may not hold the delimiter ':' (l. 672-680), toString() is the name.
 */
class PathClass {
    static final String DELIMITER = ':' // PathClass.java:112, 118
    private static final Map<String, PathClass> EXISTING = [:].asSynchronized()
    private final String name
    private final Integer color

    private PathClass(String name, Integer color) {
        this.name = name
        this.color = color
    }

    static PathClass getInstance(String name, Integer color) {
        if (name?.contains(DELIMITER)) {
            throw new IllegalArgumentException("Name '${name}' contains the delimiter '${DELIMITER}' - please use " +
                    'a valid name or getInstanceFromString()')
        }
        return EXISTING.computeIfAbsent(name) { new PathClass(name, color) }
    }

    String getName() { name }

    Integer getColor() { color }

    @Override
    String toString() { name }
}
