package antonibridge

import java.util.prefs.Preferences

/**
 * "ANTONI self-test": every QuPath call the panel makes, tried inside the user's own QuPath on the open image,
 * and one report to paste into a bug report (versions, user directory, what passed, what failed and how).
 * It leaves nothing behind: the test description is removed again and QuPath is not told of a change.
 * Runs on the JavaFX thread.
 */
class SelfTest {
    static final String MARKER = '[antoni-bridge self-test]'

    private final QuPathGlue glue
    private final List<String> lines = []
    private int failed

    SelfTest(QuPathGlue glue) {
        this.glue = glue
    }

    /** The report, one check a line. */
    String run() {
        lines << "ANTONI self-test: QuPath ${version()}, Java ${System.getProperty('java.version')}, " +
                "Groovy ${GroovySystem.version}, ${System.getProperty('os.name')}"
        lines << "user directory: ${userDirectories()}"
        check('JeroMQ on the class path') { Class.forName('org.zeromq.ZMQ', false, getClass().classLoader).name }
        check('the ANTONI tab') { glue.tab.tabPane != null ? 'in the analysis pane' : 'undocked' }
        check('menu commands and shortcut') { glue.shortcutItem.accelerator?.displayText ?: 'no shortcut' }
        check('Alt+right-click menu on every viewer') {
            List views = glue.qupath.getAllViewers().collect { it.getView() }
            int watched = views.count { it.properties.get(QuPathGlue.FILTER_KEY) != null }
            if (watched != views.size()) {
                throw new IllegalStateException("${watched} of ${views.size()} viewers have it")
            }
            "${watched} viewer(s)"
        }
        check('the open image: file and pixel size') {
            AskTarget whole = glue.target(true)
            "${whole.slide}, ${whole.mpp ?: 'no'} \u00b5m/pixel"
        }
        check('the selected annotation: its region') { regionText(glue.target(false)) }
        check('writing and removing a description') { describeAndRestore(glue.target(false)) }
        check('where whole-image answers are saved') { wholeImageStore(glue.qupath) }
        check('evidence tiles (one made, not added)') { evidenceTile() }
        check('similar slides: the project images') { projectImages() }
        Map daemon = glue.panel.daemonState()
        check('the daemon (hello)') {
            if (!daemon.connected) {
                Map problem = daemon.problem as Map
                throw new IllegalStateException(problem ? "${problem.message} Hint: ${problem.hint}." : 'connecting')
            }
            "${daemon.server} at ${daemon.address}, ${daemon.demo ? 'demo' : 'real'} weights"
        }
        lines << (failed ? "${failed} check(s) failed" : 'all checks passed')
        return lines.join('\n')
    }

    private void check(String what, Closure<Object> step) {
        try {
            lines << "ok   ${what}: ${step.call()}"
        } catch (Problem p) {
            lines << "skip ${what}: ${p.message}"
        } catch (Throwable t) {
            failed++
            lines << "FAIL ${what}: ${t.class.name}: ${t.message}"
        }
    }

    private static String regionText(AskTarget target) {
        "${target.label}: ${target.region.type}, ${target.region.coordinates.size()} part(s)"
    }

    /** setDescription and getDescription on each annotation, then its own description back (null removes it). */
    private static String describeAndRestore(AskTarget target) {
        target.objects.each { annotation ->
            String own = annotation.getDescription()
            try {
                annotation.setDescription("${own ?: ''}${MARKER}".toString())
                if (!annotation.getDescription()?.endsWith(MARKER)) {
                    throw new IllegalStateException('the description did not keep the text written')
                }
            } finally {
                annotation.setDescription(own)
            }
        }
        "${target.objects.size()} annotation(s), restored"
    }

    /** The project entry's metadata, or the image's properties without one (read only: nothing is written). */
    private static String wholeImageStore(def qupath) {
        def imageData = qupath.getImageData()
        if (imageData == null) {
            throw new Problem('bad-target', 'No image is open.', 'open a slide')
        }
        def project = qupath.getProject()
        def entry = project?.getEntry(imageData)
        if (entry == null) {
            String why = project == null ? 'no project is open' : 'the image is not in the open project'
            return "the image's properties (${why}; ${imageData.getProperties().size()} there)"
        }
        return "the project entry's metadata (${entry.getMetadata().size()} entries there)"
    }

    /** A tile object of the evidence map's class, with its measurement and colour, left out of the image. */
    private String evidenceTile() {
        def tile = QuPathGlue.evidenceTile([0, 0, 256, 1], 1)
        double value = tile.getMeasurementList().get(EvidenceMap.MEASUREMENT)
        if (!tile.isTile() || value != 1d || tile.getColor() == null) {
            throw new IllegalStateException("the tile is not as made (tile ${tile.isTile()}, value ${value})")
        }
        "class \"${tile.getPathClass()}\", ${glue.evidenceTiles().size()} evidence tiles on the image"
    }

    /** The open project's file and its images with one file each, which a similar slide opens as entries. */
    private String projectImages() {
        def project = glue.qupath.getProject()
        if (project == null) {
            return 'no project is open: similar slides open as files'
        }
        int files = project.getImageList().count { it.getURIs().size() == 1 }
        "${glue.projectFile()}: ${files} image(s) with one file"
    }

    private String version() {
        try {
            return glue.qupath.getClass().getVersion() as String
        } catch (Exception exc) {
            return "unknown (${exc.class.simpleName})"
        }
    }

    /** QuPath's preference userPath for each version (PathPrefs.java:762), as the installer reads it. */
    private static String userDirectories() {
        ['0.7', '0.6'].collect { String v ->
            String node = "io.github.qupath/${v}"
            String path = Preferences.userRoot().nodeExists(node) ? Preferences.userRoot().node(node).get('userPath', '') : ''
            "QuPath ${v}: ${path ?: 'not set'}"
        }.join('; ')
    }
}
