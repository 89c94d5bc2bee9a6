package qupath.lib.gui.scripting

import qupath.lib.gui.QuPathGUI

/**
 * TEST DOUBLE of QuPath's QPEx, whose static methods every QuPath script imports by default
 * (QuPathGUI.java 1966-1967 in QuPath 0.6.0: setDefaultStaticImports(QPEx)). Only getQuPath().
 */
class QPEx {
    static QuPathGUI getQuPath() { QuPathGUI.getInstance() }
}
