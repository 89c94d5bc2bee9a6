package qupath.lib.gui.scripting

import javafx.application.Platform
import qupath.lib.gui.QuPathGUI

/**
 * TEST DOUBLE of QuPath's QPEx, whose static methods every QuPath script imports by default
 * (QuPathGUI.java 1966-1967 in QuPath 0.6.0: setDefaultStaticImports(QPEx)). Only getQuPath() and the default
 * imports that exist here.
 */
class QPEx {
    static QuPathGUI getQuPath() { QuPathGUI.getInstance() }

    /**
     * QPEx.java 115-148: the classes every script imports (QP's, then QuPathGUI, Dialogs, ... and JavaFX's
     * Platform); the double has only QuPathGUI and Platform of them, and Groovy refuses imports of missing classes.
     */
    static Collection<Class<?>> getCoreClasses() { [QuPathGUI, Platform] }
}
