package qupathdouble

/**
 * TEST DOUBLE of QuPath's MeasurementList (qupath-core .../measurements/MeasurementList.java in QuPath 0.6.0):
 * put(name, value) replaces a value of the same name (l. 79), get(name) is NaN when absent (l. 215), asMap()
 * (l. 283), close() (l. 249).
 */
class MeasurementList {
    private final Map<String, Double> values = [:]

    void put(String name, double value) { values.put(name, value) }

    double get(String name) { values.containsKey(name) ? values.get(name) : Double.NaN }

    Map<String, Number> asMap() { values }

    void close() {}
}
