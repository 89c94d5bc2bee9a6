package qupathdouble

/** TEST DOUBLE of QuPath's PixelCalibration: getPixelWidthMicrons, NaN when unknown (PixelCalibration.java:213, 0.6.0). */
class PixelCalibration {
    private final double width

    PixelCalibration(double width) { this.width = width }

    double getPixelWidthMicrons() { width }
}
