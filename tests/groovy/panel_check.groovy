// The chat panel as a user drives it, against a real daemon (ANTONI_BRIDGE_CONNECTION_FILE), inside the
// QuPath double: asks about an annotation, follows up, takes a screenshot, shows the evidence of an answer (a
// second screenshot, with the map), looks for similar slides, then cancels a whole-slide question while its tiles
// are embedded. The panel sits in the double's main window (QuPath's layout), whose viewer shows the slide's
// thumbnail: the screenshots in docs/qupath.md.
// Arguments: SLIDE SLOW_SLIDE SCREENSHOT.PNG THUMBNAIL.PNG DOWNSAMPLE EVIDENCE_SCREENSHOT.PNG. Prints what it saw
// as JSON.
import antonibridge.AntoniBridge
import antonibridge.Problem
import antonibridge.Protocol
import antonibridge.QuPathGlue
import javafx.beans.value.ChangeListener
import javafx.embed.swing.SwingFXUtils
import javafx.scene.image.Image
import javafx.scene.image.ImageView
import javafx.scene.input.Clipboard
import javafx.scene.paint.Color
import javafx.scene.shape.Polygon
import javafx.stage.Stage
import qupath.lib.gui.QuPathGUI
import qupathdouble.QuPathDouble
import qupathdouble.Viewer

import javax.imageio.ImageIO

String slide = args[0], slowSlide = args[1]
File screenshot = new File(args[2])
File thumbnail = new File(args[3])
double downsample = args[4] as double
File evidenceScreenshot = new File(args[5])
Fx.start()
Map seen = [:]
QuPathGUI qupath = QuPathGUI.getInstance()
Viewer viewer = new Viewer()
QuPathGlue glue = Fx.run {
    qupath.viewers.add(viewer)
    QuPathGlue.install(qupath)
} as QuPathGlue
def panel = glue.panel
Stage stage = Fx.run {
    Stage window = qupath.showMainWindow(1280, 800)
    glue.showPanel()
    return window
} as Stage
Fx.run {
    panel.answerTokens.text = '48' // short demo answers: the settings field, as a user sets it
    panel.apply.fire()
}
// The status read in the same step that saw it idle: applying the settings reconnects in the background,
// so a second read could catch the line between two connections.
Fx.waitFor('the connection to the daemon and its queue', 30) { (seen.status = panel.status.text).endsWith('idle') }

def tumour = QuPathDouble.annotation('POLYGON ((1500 1500, 4000 1500, 4000 4000, 1500 4000, 1500 1500))', 'Tumour')
qupath.imageData = QuPathDouble.image(new File(slide).toURI().toString(), null, 0.25)
qupath.imageData.hierarchy.selectionModel.setSelectedObjects([tumour], tumour)
double viewScale = 1 // level-0 pixels to the viewer's: set when the thumbnail is laid out
Fx.run { // what QuPath's viewer would show: the slide, and the selected annotation in yellow (PathPrefs.java:1290)
    Polygon outline = new Polygon(*tumour.getROI().getGeometry().coordinates.collectMany { [it.x, it.y] }
            .collect { (it as double) / downsample })
    outline.fill = Color.TRANSPARENT
    outline.stroke = Color.YELLOW
    outline.strokeWidth = 2
    Image image = new Image(thumbnail.toURI().toString())
    double scale = 820 / image.width // the thumbnail across the viewer, as QuPath opens a slide to fit
    viewScale = scale / downsample
    outline.points.setAll(outline.points.collect { it * scale }) // scaled points keep the line 2 px wide
    ImageView view = new ImageView(image)
    view.fitWidth = image.width * scale
    view.preserveRatio = true
    viewer.view.children.addAll(view, outline)
    viewer.view.children.each { it.translateX = 20; it.translateY = 40 }
}

/** Ask as a user does; returns what the panel showed while answering. */
Closure askAndWait = { String question ->
    List progress = []
    int transcriptChanges = 0
    ChangeListener onProgress = { obs, old, text -> if (text) progress << text } as ChangeListener
    ChangeListener onTranscript = { obs, old, text -> transcriptChanges++ } as ChangeListener
    Fx.run {
        panel.progressText.textProperty().addListener(onProgress)
        panel.transcript.textProperty().addListener(onTranscript)
        panel.question.text = question
        panel.askButton.fire()
    }
    Fx.waitFor('the answer', 120) { !panel.askButton.disabled }
    Fx.run {
        panel.progressText.textProperty().removeListener(onProgress)
        panel.transcript.textProperty().removeListener(onTranscript)
        [progress: progress.unique(), transcriptChanges: transcriptChanges, transcript: panel.transcript.text,
         message: panel.message.text]
    }
}
seen.first = askAndWait('Which stain is this?')
seen.followUp = askAndWait('Is there DAB (brown) staining?')
seen.annotation = [description: tumour.getDescription(), metadata: new LinkedHashMap(tumour.getMetadata())]
Fx.run { // the tab headers scroll to a tab selected once the window is laid out, as after a click on the menu
    qupath.analysisTabPane.selectionModel.select(0)
    glue.showPanel()
}
Fx.run {
    ImageIO.write(SwingFXUtils.fromFXImage(stage.scene.snapshot(null), null), 'png', screenshot)
}

// The evidence of the follow-up's answer ("Is there DAB (brown) staining?"): the button under it, as a user clicks.
List explainProgress = Collections.synchronizedList([])
ChangeListener onExplain = { obs, old, text -> if (text) explainProgress << text } as ChangeListener
Fx.run {
    panel.progressText.textProperty().addListener(onExplain)
    panel.answers.children[-1].children[0].fire() // under the last answer
}
Fx.waitFor('the evidence map', 180) { !panel.askButton.disabled }
seen.evidence = Fx.run {
    panel.progressText.textProperty().removeListener(onExplain)
    List tiles = glue.evidenceTiles()
    [progress: explainProgress.unique(), message: panel.message.text, tiles: tiles.size(),
     values: tiles.collect { it.measurementList.get('ANTONI evidence') },
     bounds: tiles.collect { it.ROI.geometry.envelopeInternal.with { [minX, minY, maxX, maxY] } },
     colours: tiles.collect { it.color }, rows: panel.answers.children.collect { it.children[1].text },
     saved: tumour.getMetadata().findAll { it.key.startsWith('ANTONI evidence') || it.key.startsWith('ANTONI reliance') }]
}
Fx.run { // what QuPath's viewer would show: the tiles filled in their colour, as it fills detections (translucent)
    List shapes = glue.evidenceTiles().collect { tile ->
        def box = tile.ROI.geometry.envelopeInternal
        def square = new javafx.scene.shape.Rectangle(box.minX * viewScale + 20, box.minY * viewScale + 40,
                box.width * viewScale, box.height * viewScale)
        int rgb = tile.color
        square.fill = Color.rgb((rgb >> 16) & 0xff, (rgb >> 8) & 0xff, rgb & 0xff, 0.6)
        return square
    }
    viewer.view.children.addAll(1, shapes) // over the slide, under the annotation's outline
    qupath.analysisTabPane.selectionModel.select(0)
    glue.showPanel()
}
Fx.run {
    ImageIO.write(SwingFXUtils.fromFXImage(stage.scene.snapshot(null), null), 'png', evidenceScreenshot)
}
seen.removed = Fx.run {
    panel.removeEvidence.fire()
    [message: panel.message.text, left: glue.evidenceTiles().size()]
}

// Prism's heads on the same region: zero-shot labels as bars, then its report draft streamed into the conversation
Fx.run {
    panel.labels.text = 'brown DAB staining, blue haematoxylin only'
    panel.zeroShot.fire()
}
Fx.waitFor('the zero-shot labels', 120) { !panel.askButton.disabled }
seen.zeroShot = Fx.run {
    [rows: panel.zeroShotResults.children.collect { it.children[2].text },
     bars: panel.zeroShotResults.children.collect { it.children[0].progress }, message: panel.message.text]
}
int reportChanges = 0
ChangeListener onReport = { obs, old, text -> reportChanges++ } as ChangeListener
Fx.run {
    panel.transcript.textProperty().addListener(onReport)
    panel.draftReport.fire()
}
Fx.waitFor("Prism's report draft", 120) { !panel.askButton.disabled }
seen.report = Fx.run {
    panel.transcript.textProperty().removeListener(onReport)
    [transcript: panel.transcript.text, changes: reportChanges, message: panel.message.text,
     saved: Protocol.fromJson("{\"turns\": ${tumour.getMetadata()['ANTONI conversation']}}").turns]
}

// Similar slides to a smaller annotation inside the first (embedded now: a few tiles): the first's region, indexed
// when it was asked about, is the closest (the source itself is left out); a click opens it as a file (no project)
def inner = QuPathDouble.annotation('POLYGON ((2000 2000, 3000 2000, 3000 3000, 2000 3000, 2000 2000))', 'Inner')
qupath.imageData.hierarchy.selectionModel.setSelectedObjects([inner], inner)
Fx.run { panel.similarSlides.fire() }
Fx.waitFor('the similar slides', 60) { !panel.askButton.disabled }
seen.similar = Fx.run { [links: panel.similarResults.children*.text, message: panel.message.text] }
def asked = qupath.imageData
QuPathDouble.calls.clear()
Fx.run { panel.similarResults.children.find()?.fire() } // none: the test says what the panel said instead
seen.similarOpened = [calls: QuPathDouble.calls.findAll { it.startsWith('open') },
                      file: new File(qupath.imageData.server.URIs[0]).path]
qupath.imageData = asked
qupath.imageData.hierarchy.selectionModel.setSelectedObjects([tumour], tumour)
// The self-test, as a user runs it from the menu, on the annotation that has answers saved with it.
Map before = new LinkedHashMap(tumour.getMetadata())
QuPathDouble.calls.clear()
seen.selfTest = Fx.run {
    qupath.commands['Extensions>ANTONI>ANTONI self-test'].fire()
    [report: Clipboard.systemClipboard.string, unchanged: tumour.getMetadata() == before,
     changeEvents: QuPathDouble.calls.count { it.startsWith('fireObjectsChangedEvent') }]
}
Fx.run { javafx.stage.Window.windows.findAll { it != stage }.each { it.hide() } }

// The scripting API, as a "Run for project" script calls it: off the UI thread, waiting for the answer.
def api = System.getProperties().get('antonibridge.AntoniBridge') ?: AntoniBridge
seen.api = [answer: api.ask(qupath.imageData, tumour, 'What organ is this tissue from?', 8),
            onUiThread: Fx.run {
                try {
                    api.ask(qupath.imageData, null, 'Describe this slide.')
                } catch (Problem p) {
                    return p.message
                }
            }]
seen.copied = Fx.run {
    panel.copy.fire()
    [same: Clipboard.systemClipboard.string == panel.transcript.text, message: panel.message.text]
}

// Cancel while a slide nobody asked about yet is being embedded. The daemon sees a cancel between batches of
// tiles, so the time between two "Embedding tiles" reports (one batch) bounds how long a cancel may take.
qupath.imageData = QuPathDouble.image(new File(slowSlide).toURI().toString())
List<Long> batchEnds = Collections.synchronizedList([])
ChangeListener onBatch = { obs, old, text -> if (text?.startsWith('Embedding tiles')) batchEnds << System.nanoTime() }
Fx.run {
    panel.progressText.textProperty().addListener(onBatch as ChangeListener)
    panel.wholeImage.selected = true
    panel.question.text = 'Describe this slide.'
    panel.askButton.fire()
}
Fx.waitFor('a batch of tiles embedded', 60) { batchEnds.size() >= 2 } // the first report comes before any
seen.embedding = Fx.run { [text: panel.progressText.text, progress: panel.progress.progress] }
long cancelledAt = System.nanoTime()
Fx.run { panel.cancel.fire() }
Fx.waitFor('the end of the cancelled question', 30) { !panel.askButton.disabled }
seen.cancelSeconds = (System.nanoTime() - cancelledAt) / 1e9
Fx.run { panel.progressText.textProperty().removeListener(onBatch as ChangeListener) }
List<Long> ended = batchEnds.findAll { it < cancelledAt }
seen.batchSeconds = (1..<ended.size()).collect { (ended[it] - ended[it - 1]) / 1e9 }
seen.cancelled = Fx.run {
    [message: panel.message.text, question: panel.question.text, transcript: panel.transcript.text]
}

Fx.run {
    panel.close()
    stage.close()
}
println(Protocol.toJson(seen))
Fx.exit(0)
