package qupathdouble

/** TEST DOUBLE of QuPath's PixelCalibration: only what the glue calls (see QuPathDouble). */
class PixelCalibration {
    private final double width

    PixelCalibration(double width) { this.width = width }

    double getPixelWidthMicrons() { width }
}
