package qupath.lib.gui

import javafx.application.Platform
import javafx.collections.FXCollections
import javafx.collections.ObservableList
import javafx.scene.Scene
import javafx.scene.control.Menu
import javafx.scene.control.MenuBar
import javafx.scene.control.MenuItem
import javafx.scene.control.SplitPane
import javafx.scene.control.Tab
import javafx.scene.control.TabPane
import javafx.scene.input.KeyCombination
import javafx.scene.layout.BorderPane
import javafx.scene.layout.HBox
import javafx.scene.layout.Priority
import javafx.stage.Stage
import org.controlsfx.control.action.Action
import org.controlsfx.control.action.ActionUtils
import qupath.lib.gui.scripting.QPEx
import qupathdouble.QuPathDouble

import javax.script.ScriptContext
import javax.script.ScriptEngine
import javax.script.ScriptEngineManager
import javax.script.SimpleScriptContext
import java.util.concurrent.FutureTask
import java.util.function.Consumer
import java.util.prefs.Preferences
import java.util.regex.Pattern

/**
 * TEST DOUBLE of QuPath's main window (QuPath cannot be installed on build machines): the calls the glue
 * makes, each recorded in QuPathDouble.calls, with the behaviour of QuPath 0.6.0's QuPathGUI.java (lines
 * named per method; 0.7.0 is the same there). Menu items come from ControlsFX actions as in QuPath, so their
 * accelerator is bound and setting it throws. Scripts run as QuPath runs them: default imports prepended,
 * compiled over the class loader of the jars in `<userPath>/extensions`, on the JavaFX thread at startup and
 * off it from the script editor unless the first line says guiscript=true.
 */
class QuPathGUI {
    static final String PREFERENCES_NODE = 'io.github.qupath/0.6' // PathPrefs.java:762 (-Dqupath.prefs.name)
    private static final String ACTION_KEY = 'qupath.lib.gui.actions.ActionTools' // ActionTools.java:92
    private static final Pattern GUI_SCRIPT = Pattern.compile('guiscript *?= *?true') // DefaultScriptEditor.java:374
    private static QuPathGUI instance

    final TabPane analysisTabPane = new TabPane()
    final ObservableList viewers = FXCollections.observableArrayList()
    final Map<String, MenuItem> commands = [:]
    final Menu extensionsMenu = new Menu('Extensions')
    private final Map<KeyCombination, Action> accelerators = [:]
    Object imageData
    Object project // a qupathdouble.Project, or null: no project open

    /** QuPathGUI.java:2530: QuPath's version (a Version there, its text here). */
    static String getVersion() { '0.6.0 (test double)' }

    static QuPathGUI getInstance() {
        if (instance == null) {
            instance = new QuPathGUI()
        }
        return instance
    }

    /** QuPathGUI.java:1283. */
    TabPane getAnalysisTabPane() {
        QuPathDouble.calls << 'getAnalysisTabPane'
        return analysisTabPane
    }

    /** QuPathGUI.java:1335: a live list; viewers added later (a grid) appear in it. */
    ObservableList getAllViewers() {
        QuPathDouble.calls << 'getAllViewers'
        return viewers
    }

    /** QuPathGUI.java:2659: the current viewer's image, or null. */
    Object getImageData() {
        QuPathDouble.calls << 'getImageData'
        return imageData
    }

    /** QuPathGUI.java 2650: the open project, or null. */
    Object getProject() {
        QuPathDouble.calls << 'getProject'
        return project
    }

    /** QuPathGUI.java:1343: the active viewer (the double's first). */
    Object getViewer() {
        QuPathDouble.calls << 'getViewer'
        return viewers ? viewers[0] : null
    }

    /**
     * QuPathGUI.java 1486-1520: opens a project entry's image in the current viewer (false without a project or when
     * it is already open there). The double shows the entry's image data.
     */
    boolean openImageEntry(Object entry) {
        QuPathDouble.calls << "openImageEntry ${entry?.getImageName()}".toString()
        if (entry == null || project == null || project.getEntry(imageData) == entry) {
            return false
        }
        imageData = entry.imageData
        return true
    }

    /**
     * QuPathGUI.java 1637-1640 and 1653-1760: opens a file in a viewer, throwing IOException when it cannot; with
     * one viewer, a null viewer means that one. The double opens any path as an image served from that file.
     */
    boolean openImage(Object viewer, String path) throws IOException {
        QuPathDouble.calls << "openImage ${path}".toString()
        if (viewer == null && viewers.size() != 1) {
            return false
        }
        imageData = QuPathDouble.image(new File(path).toURI().toString())
        return true
    }

    /** QuPathGUI.java 2633-2636: the project list shows the entries again (their metadata with them). */
    void refreshProject() {
        QuPathDouble.calls << 'refreshProject'
    }

    /**
     * QuPathGUI.java 1899-1922: on the JavaFX thread, an action from the runnable, a menu item from the action
     * (ActionTools.java 630-640; ControlsFX binds the item's accelerator to the action's, ActionUtils.java:763),
     * replacing an item of the same name in the menu "Extensions>...".
     */
    MenuItem installCommand(String menuPath, Runnable runnable) {
        if (!Platform.isFxApplicationThread()) {
            return onFxThread { installCommand(menuPath, runnable) } as MenuItem
        }
        QuPathDouble.calls << "installCommand ${menuPath}".toString()
        List<String> names = menuPath.split('>') as List
        Menu menu = extensionsMenu
        names[1..-2].each { String name ->
            Menu sub = menu.items.find { it instanceof Menu && it.text == name } as Menu
            if (sub == null) {
                sub = new Menu(name)
                menu.items.add(sub)
            }
            menu = sub
        }
        Action action = new Action(names[-1], { runnable.run() } as Consumer)
        MenuItem item = ActionUtils.createMenuItem(action)
        item.properties.put(ACTION_KEY, action)
        int same = menu.items.findIndexOf { it.text == item.text }
        same >= 0 ? menu.items.set(same, item) : menu.items.add(item)
        commands[menuPath] = item
        return item
    }

    /**
     * QuPathGUI.java 2082-2125 and 2141-2160: the accelerator goes on the item's action (taken from any other
     * action that had it), then the item is re-added to its menu, which it must be in.
     */
    boolean setAccelerator(MenuItem item, KeyCombination combo) {
        if (!Platform.isFxApplicationThread()) {
            return onFxThread { setAccelerator(item, combo) } as boolean
        }
        QuPathDouble.calls << "setAccelerator ${item.text} ${combo?.name}".toString()
        Action action = item.properties.get(ACTION_KEY) as Action
        Action other = accelerators.get(combo)
        if (other != null && other != action) {
            other.acceleratorProperty().unbind()
            other.accelerator = null
        }
        if (action != null) {
            action.acceleratorProperty().unbind()
            action.accelerator = combo
            accelerators.put(combo, action)
        } else {
            item.acceleratorProperty().unbind()
            item.accelerator = combo
        }
        List items = item.parentMenu.items
        int index = items.indexOf(item)
        items.remove(item)
        items.add(index, item)
        return true
    }

    /** QuPathGUI.java 382-416: the startup script preference, run once on the JavaFX thread (posted later). */
    void maybeRunStartupScript() {
        String path = System.getProperty('qupath.startup.script') ?: preferences().get('startupScriptPath', '')
        if (path) {
            Platform.runLater { runScript(new File(path)) }
        }
    }

    /**
     * DefaultScriptEditor.java 1508-1515 and 1544-1566: a script from the editor runs on the JavaFX thread only
     * when its first line matches guiscript=true, else on a background thread. Returns that thread's name.
     */
    String runFromEditor(File file) {
        String firstLine = file.readLines('UTF-8').find() ?: ''
        boolean gui = GUI_SCRIPT.matcher(firstLine.toLowerCase()).find()
        FutureTask<String> task = new FutureTask<String>({
            runScript(file)
            return Thread.currentThread().name
        })
        gui ? Platform.runLater(task) : new Thread(task, 'qupath-script-editor').start()
        return task.get()
    }

    /**
     * As QuPathGUI.runScript (QuPathGUI.java 1962-1975) and DefaultScriptLanguage.execute (DefaultScriptLanguage.java
     * 161-214): QuPath's default imports prepended as text on one line, `import C;` for each of QPEx.getCoreClasses()
     * then `import static qupath.lib.gui.scripting.QPEx.*` (533-545), then a line break and the script; evaluated
     * uncompiled (ScriptParameters.java:61) in a fresh SimpleScriptContext naming the file (419-440), by the Groovy
     * javax.script engine that a ScriptEngineManager over the extensions' class loader finds, with the thread's
     * context loader set to that loader (ScriptLanguageProvider.java 180-182, 226-230).
     */
    Object runScript(File file) {
        String imports = QPEx.getCoreClasses().collect { "import ${it.name};" }.join(' ') + "import static ${QPEx.name}.*"
        ClassLoader loader = extensionClassLoader()
        Thread.currentThread().contextClassLoader = loader
        ScriptEngine engine = new ScriptEngineManager(loader).getEngineByName('groovy')
        if (engine == null) {
            throw new IllegalStateException('No Groovy script engine (groovy-jsr223) is on the class path.')
        }
        ScriptContext context = new SimpleScriptContext()
        context.setAttribute(ScriptEngine.FILENAME, file.name, ScriptContext.ENGINE_SCOPE)
        return engine.eval(imports + System.lineSeparator() + file.getText('UTF-8'), context)
    }

    /** The jars in `<userPath>/extensions`, loaded as QuPath's extension manager does; none without a userPath. */
    ClassLoader extensionClassLoader() {
        String userPath = preferences().get('userPath', '')
        File[] jars = userPath ? new File(userPath, 'extensions').listFiles({ File f -> f.name.endsWith('.jar') }
                as FileFilter) : null
        URL[] urls = (jars ?: new File[0]).collect { it.toURI().toURL() } as URL[]
        return new URLClassLoader(urls, QuPathGUI.classLoader)
    }

    /**
     * QuPath's main window as QuPathGUI.java 318-333 and QuPathMainPaneManager.java 68-96 lay it out: the menu bar
     * (QuPath's menus in the order of QuPathGUI.java 673-691; Extensions holds the installed commands) over a split
     * pane, the analysis tab pane on the left (min 300, preferred 400 px wide, not resized with the window) and
     * the viewers on the right (black, PathPrefs.java:1277), the divider at min(0.5, 400 / width). QuPath's own
     * tabs come first, empty here (AnalysisTabPane.java 101-160: Project, Image, Annotations, Hierarchy,
     * Workflow), then the extensions' tabs. The double has no toolbar and draws no slides: the caller puts what
     * a viewer shows into its view.
     */
    Stage showMainWindow(double width, double height) {
        List<String> own = ['Project', 'Image', 'Annotations', 'Hierarchy', 'Workflow']
        if (!analysisTabPane.tabs.any { it.text == own[0] }) {
            analysisTabPane.tabs.addAll(0, own.collect { String name ->
                Tab tab = new Tab(name)
                tab.closable = false
                return tab
            })
        }
        analysisTabPane.minWidth = 300
        analysisTabPane.prefWidth = 400
        SplitPane.setResizableWithParent(analysisTabPane, false)
        HBox viewerRegion = new HBox(2, *viewers.collect { it.getView() })
        viewers.each { HBox.setHgrow(it.getView(), Priority.ALWAYS) }
        viewerRegion.style = '-fx-background-color: black;'
        SplitPane split = new SplitPane(analysisTabPane, viewerRegion)
        split.setDividerPosition(0, Math.min(0.5, 400 / width))
        List<Menu> menus = ['File', 'Edit', 'Tools', 'View', 'Objects', 'TMA', 'Measure', 'Automate', 'Analyze',
                            'Classify', 'Extensions', 'Window', 'Help'].collect {
            it == 'Extensions' ? extensionsMenu : new Menu(it)
        }
        Stage window = new Stage()
        window.title = "QuPath ${getVersion()}"
        window.scene = new Scene(new BorderPane(split, new MenuBar(*menus), null, null, null), width, height)
        window.show()
        return window
    }

    private static Preferences preferences() {
        Preferences.userRoot().node(PREFERENCES_NODE)
    }

    private static Object onFxThread(Closure step) {
        FutureTask task = new FutureTask(step)
        Platform.runLater(task)
        return task.get()
    }
}
