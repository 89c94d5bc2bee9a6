package antonibridge

import javafx.collections.ListChangeListener
import javafx.event.EventHandler
import javafx.scene.control.ContextMenu
import javafx.scene.control.MenuItem
import javafx.scene.control.Tab
import javafx.scene.input.KeyCombination
import javafx.scene.input.MouseButton
import javafx.scene.input.MouseEvent
import qupath.fx.utils.FXUtils
import qupath.lib.common.ColorTools
import qupath.lib.objects.PathObjects
import qupath.lib.objects.classes.PathClass
import qupath.lib.roi.ROIs

import java.nio.file.FileSystemNotFoundException
import java.nio.file.Paths
import java.util.regex.Matcher

/**
 * Everything that touches QuPath, kept to the calls listed in docs/qupath.md ("QuPath calls the glue
 * makes"): the analysis pane's tab, menu commands with a shortcut, an Alt+right-click menu on every viewer
 * (QuPath has no API for its own viewer menu), the current image's file and selection, and saving answers
 * with annotations or the image, evidence and zero-shot maps as tile objects, and opening similar slides.
 * Called on the JavaFX thread, except `targetOf`, which reads only image data (AntoniBridge.ask calls it).
 */
class QuPathGlue {
    static final String TAB_ID = 'antoni-bridge-chat'
    static final String FILTER_KEY = 'antoni-bridge.alt-right-click'
    static final String MENU = 'Extensions>ANTONI'
    static final String SHORTCUT = 'Shortcut+Alt+Q'
    static final String SHORTCUT_TEXT = System.getProperty('os.name').startsWith('Mac') ? 'Cmd+Option+Q' : 'Ctrl+Alt+Q'
    static final String DESCRIBE = 'Describe the tissue in this region.'
    static final long MAX_VERTICES = 250000 // far beyond any drawn region; keeps requests small and the UI quick
    static final String QUESTION = 'ANTONI question' // metadata keys shared with batch (antoni_bridge/batch/results.py)
    static final String ANSWER = 'ANTONI answer'
    static final String PROVENANCE = 'ANTONI provenance'
    static final String CONVERSATION = 'ANTONI conversation'
    static final String RELIANCE = 'ANTONI reliance'
    static final String EVIDENCE = 'ANTONI evidence'
    static final List<String> MAP_CLASSES = [EvidenceMap.CLASS_NAME, EvidenceMap.ZERO_SHOT_CLASS]
    static final Map<String, Integer> MAP_CLASS_COLOURS = [ // the classes' own colours in the class list
            (EvidenceMap.CLASS_NAME): ColorTools.packRGB(240, 59, 32),
            (EvidenceMap.ZERO_SHOT_CLASS): ColorTools.packRGB(117, 107, 177)]

    final Object qupath
    ChatPanel panel
    Tab tab
    MenuItem shortcutItem // the command with the shortcut
    private ContextMenu regionMenu

    private QuPathGlue(Object qupath) {
        this.qupath = qupath
    }

    /** Add the panel, the commands and the viewer menu to a running QuPath (again: replaces the old panel). */
    static QuPathGlue install(Object qupath) {
        QuPathGlue glue = new QuPathGlue(qupath)
        glue.addTab()
        glue.addCommands()
        glue.watchViewers()
        return glue
    }

    // ------------------------------------------------------------------ what a question is about

    /** The current image, or its selected annotations, as an AskTarget; a Problem says why not. */
    AskTarget target(boolean wholeImage) {
        def imageData = qupath.getImageData()
        if (imageData == null) {
            throw refusal('No image is open.', 'open a slide in QuPath first')
        }
        if (!wholeImage) {
            return targetOf(imageData, selectedAnnotations(imageData.getHierarchy()))
        }
        AskTarget whole = targetOf(imageData, null)
        whole.savedConversation = savedWithImage(imageData).get(CONVERSATION)
        return whole
    }

    /** An image, or these annotations of it (null: the whole image), as an AskTarget; a Problem says why not. */
    static AskTarget targetOf(def imageData, List annotations) {
        def server = imageData.getServer()
        String slide = slideFile(server)
        String name = new File(slide).name
        if (annotations == null) {
            return new AskTarget(key: slide, label: "the whole image ${name}", slide: slide, mpp: pixelSize(server),
                    imageData: imageData)
        }
        List sorted = annotations.sort(false) { it.getID().toString() }
        boolean one = sorted.size() == 1
        String about = one ? "annotation ${nameOf(sorted[0])}" : "${sorted.size()} annotations"
        return new AskTarget(
                key: slide + '#' + sorted.collect { it.getID().toString() }.join(','),
                label: "${about} in ${name}",
                slide: slide,
                region: regionOf(sorted),
                mpp: pixelSize(server),
                objects: sorted,
                hierarchy: imageData.getHierarchy(),
                imageData: imageData,
                savedConversation: one ? sorted[0].getMetadata().get(CONVERSATION) : null)
    }

    /**
     * Keep the answer with its annotations (their metadata, and their description after the user's own text), or,
     * for the whole image, with the image. Returns a notice for the panel when the image is in no project.
     */
    String save(AskTarget target, Conversation conversation) {
        keep(target, conversation) { Map saved -> record(conversation, saved) }
    }

    /**
     * Keep an evidence map with the answer it explains: `ANTONI evidence N` beside `ANTONI answer N` (the
     * latest N whose answer is this one's text), and the conversation.
     */
    String saveEvidence(AskTarget target, Conversation conversation, Map answer, EvidenceMap map) {
        keep(target, conversation) { Map saved ->
            int number = numberOf(saved, answer.content as String)
            number > 0 ? [("${EVIDENCE} ${number}".toString()): map.toJson()] : [:]
        }
    }

    /** Keep the conversation only (after Prism's report draft joined it). */
    String saveConversation(AskTarget target, Conversation conversation) {
        keep(target, conversation) { Map saved -> [:] }
    }

    /**
     * Write `entries(saved metadata)` and the whole conversation where the target's answers are kept: each
     * annotation's metadata and description, or the image's project entry or properties.
     */
    private String keep(AskTarget target, Conversation conversation, Closure<Map> entries) {
        requireOpen(target, 'it was not saved there; it stays in the panel',
                'copy the conversation, or open that image again and ask once more to save it')
        if (!target.objects) {
            return saveWithImage(target.imageData, conversation, entries)
        }
        target.objects.each { annotation ->
            Map<String, String> metadata = annotation.getMetadata()
            metadata.putAll(entries(metadata) + [(CONVERSATION): conversation.toJson()])
            annotation.setDescription(conversation.describe(annotation.getDescription()))
        }
        target.hierarchy.fireObjectsChangedEvent(this, target.objects) // so that QuPath saves the change
        return null
    }

    /** A Problem unless the target's image is the open one: nothing is written into another image. */
    private void requireOpen(AskTarget target, String consequence, String hint) {
        if (!target.imageData.is(qupath.getImageData())) {
            throw new Problem('image-closed', "The answer is about ${target.label}, which is no longer the open " +
                    "image, so ${consequence}.", hint)
        }
    }

    /**
     * Where batch puts a whole-image answer: the project entry's metadata (ProjectImageEntry.getMetadata(), written
     * by Project.syncChanges(), then the project list refreshed, as QuPath's own "Add metadata" does:
     * ProjectBrowser.java 680-683 in QuPath 0.6.0). An image in no project keeps it in its properties
     * (ImageData.setProperty, ImageData.java:487, saved in the image's data file; QuPath then asks to save).
     */
    private String saveWithImage(def imageData, Conversation conversation, Closure<Map> entries) {
        def project = qupath.getProject()
        def entry = project?.getEntry(imageData)
        if (entry == null) {
            Map properties = imageData.getProperties()
            (entries(properties) + [(CONVERSATION): conversation.toJson()]).each { key, value ->
                imageData.setProperty(key as String, value)
            }
            return "${project == null ? 'No project is open' : 'The image is not in the open project'}, so the " +
                    "answer is kept in the image's properties, not in a project's image metadata: save the image " +
                    '(File > Save) to keep it.'
        }
        Map<String, String> metadata = entry.getMetadata()
        metadata.putAll(entries(metadata) + [(CONVERSATION): conversation.toJson()])
        project.syncChanges()
        qupath.refreshProject()
        return null
    }

    /** Where a whole image's answers are saved: its project entry's metadata, else its properties. */
    private Map savedWithImage(def imageData) {
        def entry = qupath.getProject()?.getEntry(imageData)
        return entry != null ? entry.getMetadata() : imageData.getProperties()
    }

    /**
     * The last question and answer as metadata entries shared with batch (docs/qupath.md, "Saved with the
     * annotation"): `ANTONI question N`, `ANTONI answer N`, `ANTONI provenance N` (JSON) and, from a daemon that
     * measures it, `ANTONI reliance N` (JSON), numbered after the answers `saved` already holds, from batch or
     * earlier questions, which are kept. (`keep` adds `ANTONI conversation`, the whole conversation as JSON, from
     * which the panel continues it.)
     */
    private static Map<String, String> record(Conversation conversation, Map saved) {
        int number = 1 + (saved.keySet().collect { answerNumber(it as String) }.max() ?: 0)
        Map answer = conversation.lastAnswer()
        Map<String, String> entries = [
                ("${QUESTION} ${number}".toString())  : conversation.lastQuestion(),
                ("${ANSWER} ${number}".toString())    : (answer.content as String).trim(),
                ("${PROVENANCE} ${number}".toString()): Protocol.toJson((answer.provenance ?: [:]) + [time: answer.time]),
        ]
        if (answer.reliance instanceof Map) {
            entries.put("${RELIANCE} ${number}".toString(), Protocol.toJson(answer.reliance))
        }
        return entries
    }

    /** The latest N whose `ANTONI answer N` in `saved` is this answer's text; 0 when none is. */
    private static int numberOf(Map saved, String answer) {
        saved.findAll { key, value -> answerNumber(key as String) > 0 && value == answer.trim() }
                .collect { key, value -> answerNumber(key as String) }.max() ?: 0
    }

    /** N of a key `ANTONI answer N`, else 0. */
    private static int answerNumber(String key) {
        String number = key.startsWith(ANSWER + ' ') ? key.substring(ANSWER.length() + 1) : ''
        return number.isInteger() ? number as int : 0
    }

    // ------------------------------------------------------------------ evidence maps

    /**
     * The map as QuPath objects: one tile object per tile (a rectangle ROI, PathObjects.createTileObject), with the
     * map's measurement (`ANTONI evidence`, or `Prism zero-shot: LABEL`) and colour, all in the map's class
     * (`ANTONI evidence` or `Prism zero-shot`, so the Annotations tab's class list hides them, or selects them for
     * deleting, in one click). An earlier map of that class on the image is replaced. Returns the number of tiles.
     */
    int showEvidence(AskTarget target, EvidenceMap map) {
        requireOpen(target, 'its map was not drawn there', 'open that image again and show the map')
        removeMaps([map.className])
        double scale = map.scale()
        PathClass pathClass = mapClass(map.className)
        List tiles = map.tiles().collect { List<Number> tile -> evidenceTile(tile, scale, pathClass, map.measurement) }
        target.imageData.getHierarchy().addObjects(tiles)
        return tiles.size()
    }

    /** One tile [x, y, size, value] of a map as a QuPath tile object, coloured on the map's `scale`. */
    static Object evidenceTile(List<Number> tile, double scale, PathClass pathClass = mapClass(EvidenceMap.CLASS_NAME),
                               String measurement = EvidenceMap.MEASUREMENT) {
        double value = tile[3] as double
        def object = PathObjects.createTileObject(ROIs.createRectangleROI(tile[0] as double, tile[1] as double,
                tile[2] as double, tile[2] as double), pathClass)
        def measurements = object.getMeasurementList()
        measurements.put(measurement, value)
        measurements.close()
        List<Integer> rgb = EvidenceMap.colour(value, scale)
        object.setColor(ColorTools.packRGB(rgb[0], rgb[1], rgb[2]) as Integer)
        return object
    }

    /** The evidence tiles on the open image. */
    List evidenceTiles() {
        mapTiles(EvidenceMap.CLASS_NAME)
    }

    /** The tiles of the map class `className` on the open image. */
    List mapTiles(String className) {
        List all = qupath.getImageData()?.getHierarchy()?.getTileObjects() as List ?: []
        return all.findAll { it.getPathClass()?.toString() == className }
    }

    /**
     * Remove the tiles of the map classes `classNames` (by default all: evidence and zero-shot) from the open image;
     * returns how many there were of each class.
     */
    Map<String, Integer> removeMaps(List<String> classNames = MAP_CLASSES) {
        Map<String, List> tiles = classNames.collectEntries { [(it): mapTiles(it)] }
        List all = tiles.values().flatten()
        if (all) {
            qupath.getImageData().getHierarchy().removeObjects(all, false)
        }
        return tiles.collectEntries { name, list -> [(name): list.size()] } as Map<String, Integer>
    }

    private static PathClass mapClass(String className) {
        PathClass.getInstance(className, MAP_CLASS_COLOURS[className] as Integer)
    }

    // ------------------------------------------------------------------ similar slides

    /** The open project's file (project.qpproj), the `within` of a `similar` job; null without a project. */
    String projectFile() {
        qupath.getProject()?.getPath()?.toString()
    }

    /** The open project's image whose file is `slide`, or null (then the slide is opened as a file). */
    Object projectImage(String slide) {
        def project = qupath.getProject()
        if (project == null) {
            return null
        }
        String wanted = Paths.get(slide).normalize().toString()
        return project.getImageList().find { entry ->
            Collection<URI> uris = entry.getURIs()
            URI uri = uris.size() == 1 ? uris.iterator().next() : null
            uri?.scheme == 'file' && Paths.get(uri.path).normalize().toString() == wanted
        }
    }

    /**
     * Open a similar slide: its project entry when it is one of the project's images (QuPathGUI.openImageEntry,
     * QuPathGUI.java:1486), else the file in the current viewer (QuPathGUI.openImage, :1637). Both do nothing when
     * the image is already open there. A Problem says why it could not be opened.
     */
    void openSlide(String slide) {
        def entry = projectImage(slide)
        try {
            entry != null ? qupath.openImageEntry(entry) : qupath.openImage(qupath.getViewer(), slide)
        } catch (IOException exc) {
            throw new Problem('not-opened', "QuPath could not open ${slide} (${exc.message}).",
                    'check that the file is still there and readable')
        }
    }

    private static String slideFile(def server) {
        String transform = transformation(server)
        if (transform) {
            throw refusal("The image is a transformed view of its file (${transform}: rotated, flipped, cropped or " +
                    "otherwise changed), so QuPath's coordinates are not the file's.",
                    'add the file to the project again without rotation or cropping, and ask about that image')
        }
        Collection<URI> uris = server.getURIs()
        if (uris.size() != 1) {
            throw refusal("The image is made of ${uris.size()} files, not one slide file.",
                    'ask about an image that is one slide file')
        }
        URI uri = uris.iterator().next()
        if (uri.scheme != 'file') {
            throw refusal("The image is not a local file (${uri}).",
                    'the daemon reads slide files: open a local or mounted copy of the slide')
        }
        Matcher series = (server.getPath() as String) =~ /--series,?\s*(\d+)/
        if (series.find() && (series.group(1) as int) > 0) {
            throw refusal("The image is series ${series.group(1)} of a multi-series file; " +
                    "the daemon reads only the file's main image.",
                    'ask about the main image, or export this series as a slide file of its own')
        }
        return filePath(uri)
    }

    /** As QuPath's GeneralTools.toPath: Paths.get after dropping a fragment or query (UNC shares on Windows). */
    private static String filePath(URI uri) {
        try {
            URI plain = uri.fragment == null && uri.query == null ? uri : new URI(uri.scheme, uri.host, uri.path, null)
            return Paths.get(plain).toString()
        } catch (URISyntaxException | IllegalArgumentException | FileSystemNotFoundException exc) {
            throw refusal("The image's file address ${uri} cannot be read as a path here (${exc.message}).",
                    'open a local or mounted copy of the slide')
        }
    }

    /** The name of a TransformingImageServer class (rotated, cropped...) serving the image, or null. */
    private static String transformation(def server) {
        for (Class type = server.getClass(); type != null; type = type.superclass) {
            if (type.simpleName == 'TransformingImageServer') {
                return server.getClass().simpleName
            }
        }
        return null
    }

    private static Double pixelSize(def server) {
        double microns = server.getPixelCalibration().getPixelWidthMicrons()
        return Double.isFinite(microns) && microns > 0 ? microns : null
    }

    private static List selectedAnnotations(def hierarchy) {
        Collection selected = hierarchy.getSelectionModel().getSelectedObjects()
        List annotations = selected.findAll { it.isAnnotation() }.toList()
        if (!annotations && selected) {
            throw refusal('The selection holds no annotation (only detections, cells or other objects).',
                    "select an annotation, or choose 'Whole image'")
        }
        if (!annotations) {
            throw refusal('No annotation is selected.', "select one or more in the viewer, or choose 'Whole image'")
        }
        return annotations
    }

    /** The annotations' area as GeoJSON in level-0 pixels, holes kept; overlapping ones are merged. */
    private static Map regionOf(List annotations) {
        annotations.each {
            if (!it.getROI().isArea()) {
                throw refusal("Annotation ${nameOf(it)} is not an area (its shape is ${it.getROI().getRoiName()}).",
                        "draw an area (rectangle, ellipse, polygon or brush), or choose 'Whole image'")
            }
        }
        // ROI.getNumPoints() is 4 for an ellipse or rectangle (EllipseROI.java:121): count what is sent
        long vertices = annotations.sum { it.getROI().getGeometry().getNumPoints() as long } as long
        if (vertices > MAX_VERTICES) {
            throw refusal(String.format('The selection has %,d vertices; the limit is %,d.', vertices, MAX_VERTICES),
                    "simplify it (Objects > Annotations > Simplify shape), select fewer annotations, " +
                            "or choose 'Whole image'")
        }
        List polygons = []
        def geometry = union(annotations)
        addPolygons(geometry, polygons)
        if (polygons.size() == 1) {
            return [type: 'Polygon', coordinates: polygons[0]]
        }
        return [type: 'MultiPolygon', coordinates: polygons]
    }

    /**
     * The annotations' geometries merged. JTS's union throws on invalid polygons (self-crossing outlines drawn
     * by hand); as QuPath's GeometryTools.union does, the shapes are then repaired with buffer(0) and merged again.
     */
    private static Object union(List annotations) {
        List geometries = annotations.collect { it.getROI().getGeometry() }
        if (geometries.size() == 1) {
            return geometries[0]
        }
        def factory = geometries[0].getFactory()
        try {
            return factory.buildGeometry(geometries).union()
        } catch (RuntimeException ignored) { // TopologyException, without naming a JTS class here
            try {
                return factory.buildGeometry(geometries.collect { it.buffer(0) }).union()
            } catch (RuntimeException exc) {
                throw refusal("The selected annotations cannot be merged: an outline crosses itself (${exc.message}).",
                        'fix the shape (Objects > Annotations > Simplify shape, or redraw it), or select one annotation')
            }
        }
    }

    /** JTS polygons as GeoJSON rings: the outer ring, then the holes. */
    private static void addPolygons(def geometry, List polygons) {
        if (geometry.getGeometryType() == 'Polygon') {
            List rings = [ring(geometry.getExteriorRing())]
            for (int i = 0; i < geometry.getNumInteriorRing(); i++) {
                rings << ring(geometry.getInteriorRingN(i))
            }
            polygons << rings
        } else if (geometry.getGeometryType() in ['MultiPolygon', 'GeometryCollection']) {
            for (int i = 0; i < geometry.getNumGeometries(); i++) {
                addPolygons(geometry.getGeometryN(i), polygons)
            }
        }
    }

    private static List ring(def lineString) {
        lineString.getCoordinates().collect { [it.x, it.y] }
    }

    private static String nameOf(def annotation) {
        String name = annotation.getName() ?: annotation.getPathClass()?.toString()
        return name ? "\"${name}\"" : '(unnamed)'
    }

    private static Problem refusal(String message, String hint) {
        new Problem('bad-target', message, hint)
    }

    // ------------------------------------------------------------------ QuPath's window

    private void addTab() {
        List tabs = qupath.getAnalysisTabPane().getTabs()
        tabs.findAll { it.id == TAB_ID }.each { old ->
            old.userData?.close() // the panel of an earlier run of the script
            tabs.remove(old)
        }
        panel = new ChatPanel(this)
        tab = new Tab('ANTONI', panel.root)
        tab.id = TAB_ID
        tab.userData = panel
        tab.closable = false // "Show the ANTONI panel" could not bring a closed tab back
        FXUtils.makeTabUndockable(tab)
        tabs.add(tab)
    }

    private void addCommands() {
        shortcutItem = qupath.installCommand("${MENU}>Ask ANTONI about this region", { askAboutRegion() } as Runnable)
        // The item's accelerator is bound to its ControlsFX action, so setting it throws; QuPath sets the action's.
        qupath.setAccelerator(shortcutItem, KeyCombination.keyCombination(SHORTCUT))
        qupath.installCommand("${MENU}>Describe this region", { describeRegion() } as Runnable)
        qupath.installCommand("${MENU}>Show the ANTONI panel", { showPanel() } as Runnable)
        qupath.installCommand("${MENU}>ANTONI self-test", { showSelfTest() } as Runnable)
        MenuItem askItem = new MenuItem('Ask ANTONI about this region...')
        askItem.onAction = { askAboutRegion() } as EventHandler
        MenuItem describeItem = new MenuItem('Describe this region')
        describeItem.onAction = { describeRegion() } as EventHandler
        regionMenu = new ContextMenu(askItem, describeItem)
    }

    private void watchViewers() {
        def viewers = qupath.getAllViewers()
        viewers.each { watch(it) }
        viewers.addListener({ change ->
            while (change.next()) {
                change.addedSubList.each { watch(it) }
            }
        } as ListChangeListener)
    }

    /**
     * Alt+right-click opens our menu; the filter runs before QuPath's own right-click handler. The filter of an
     * earlier run of the script is removed first, so that running it again gives one menu, not two.
     */
    private void watch(def viewer) {
        def view = viewer.getView()
        EventHandler old = view.properties.remove(FILTER_KEY) as EventHandler
        if (old != null) {
            view.removeEventFilter(MouseEvent.MOUSE_PRESSED, old)
        }
        EventHandler filter = { MouseEvent e ->
            if (e.button == MouseButton.SECONDARY && e.altDown) {
                e.consume()
                regionMenu.show(view, e.screenX, e.screenY)
            }
        } as EventHandler
        view.properties.put(FILTER_KEY, filter)
        view.addEventFilter(MouseEvent.MOUSE_PRESSED, filter)
    }

    void askAboutRegion() {
        showPanel()
        panel.focusOnSelection()
    }

    void describeRegion() {
        showPanel()
        panel.selection.selected = true
        panel.ask(DESCRIBE)
    }

    /** Run the self-test; its report goes to QuPath's log, the clipboard and a window. */
    String showSelfTest() {
        String report = new SelfTest(this).run()
        println(report)
        panel.showReport('ANTONI self-test', report)
        return report
    }

    /** The panel's tab selected, or, when it is undocked into a window of its own, that window to the front. */
    void showPanel() {
        if (tab.tabPane != null) {
            tab.tabPane.selectionModel.select(tab)
            return
        }
        def window = panel.root.scene?.window
        if (window != null) {
            window.iconified = false
            window.toFront()
            window.requestFocus()
        }
    }
}
