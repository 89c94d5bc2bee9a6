package qupath.lib.common

/**
 * TEST DOUBLE of QuPath's ColorTools (qupath-core .../common/ColorTools.java in QuPath 0.6.0): packRGB (l. 132-137),
 * an opaque packed ARGB int, and red/green/blue to read it back.
 */
class ColorTools {
    static int packRGB(int r, int g, int b) {
        return (255 << 24) + ((r & 0xff) << 16) + ((g & 0xff) << 8) + (b & 0xff)
    }

    static int red(int rgb) { (rgb >> 16) & 0xff }

    static int green(int rgb) { (rgb >> 8) & 0xff }

    static int blue(int rgb) { rgb & 0xff }
}
