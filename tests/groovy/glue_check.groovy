// The QuPath glue against the recording double of QuPath (tests/qupath_double): installs the panel, then
// observes the tab, the commands, the viewers' Alt+right-click menu, what questions are about (and the
// refusals), answers saved with annotations, evidence maps and Prism's heads. Prints what it saw as one JSON object on the last line.
import antonibridge.Conversation
import antonibridge.Problem
import antonibridge.Protocol
import antonibridge.QuPathGlue
import javafx.event.Event
import javafx.scene.Scene
import javafx.scene.control.ContextMenu
import javafx.scene.input.MouseButton
import javafx.scene.input.MouseEvent
import javafx.scene.layout.HBox
import javafx.stage.Stage
import javafx.stage.Window
import org.locationtech.jts.util.GeometricShapeFactory
import qupath.lib.gui.QuPathGUI
import qupathdouble.ImageData
import qupathdouble.Project
import qupathdouble.QuPathDouble
import qupathdouble.RotatedImageServer
import qupathdouble.Viewer

Fx.start()
Map seen = [:]
QuPathGUI qupath = QuPathGUI.getInstance()
def firstViewer = new Viewer()
def laterViewer = new Viewer()
QuPathGlue glue = Fx.run {
    qupath.viewers.add(firstViewer)
    QuPathGlue.install(qupath)
} as QuPathGlue
Fx.run { qupath.viewers.add(laterViewer) } // a viewer opened afterwards, as in a grid of viewers

// ---------------------------------------------------------------- what a question is about
Closure refusal = { boolean wholeImage ->
    Fx.run {
        try {
            glue.target(wholeImage)
            return null
        } catch (Problem p) {
            return [message: p.message, hint: p.hint]
        }
    }
}
Closure select = { List objects ->
    qupath.imageData.hierarchy.selectionModel.setSelectedObjects(objects, objects ? objects[-1] : null)
}
Closure regionOf = { List objects ->
    select(objects)
    Fx.run { glue.target(false).region }
}
Closure square = { int x, int y, int size ->
    int end = x + size, bottom = y + size
    "POLYGON (($x $y, $end $y, $end $bottom, $x $bottom, $x $y))"
}

seen.noImage = refusal(true)
def aSlide = QuPathDouble.image('file:/slides/a.svs', null, 0.25)
qupath.imageData = new ImageData(new RotatedImageServer(aSlide.server))
seen.rotated = refusal(true)
qupath.imageData = QuPathDouble.image('https://omero.example.org/webclient/img_detail/42')
seen.notAFile = refusal(true)
qupath.imageData = QuPathDouble.image('file:/slides/b.vsi', 'BioFormatsImageServer: file:/slides/b.vsi[--series, 2]')
seen.secondSeries = refusal(true)
qupath.imageData = QuPathDouble.image('file:/slides/b.vsi', 'BioFormatsImageServer: file:/slides/b.vsi[--series, 0]')
seen.firstSeries = refusal(true)
qupath.imageData = aSlide
seen.whole = Fx.run { glue.target(true).with { [key: key, label: label, slide: slide, region: region, mpp: mpp] } }
seen.nothingSelected = refusal(false)
select([QuPathDouble.detection(square(0, 0, 10))])
seen.onlyDetections = refusal(false)
select([QuPathDouble.annotation('MULTIPOINT ((1 1), (5 5))', 'Mitoses', 'Points')])
seen.points = refusal(false)
select([QuPathDouble.annotation('LINESTRING (0 0, 100 100)', 'Ruler', 'Line')])
seen.line = refusal(false)
def circle = new GeometricShapeFactory()
circle.numPoints = 300000
circle.size = 50000
select([QuPathDouble.annotation(circle.createCircle(), 'Huge')])
seen.enormous = refusal(false)
select([QuPathDouble.annotation(circle.createCircle(), 'Huge ellipse', 'Ellipse')]) // getNumPoints() says 4
seen.enormousEllipse = refusal(false)
seen.selectionIsReadOnly = Fx.run {
    try {
        qupath.imageData.hierarchy.selectionModel.selectedObjects.clear()
        return false
    } catch (UnsupportedOperationException ignored) {
        return true
    }
}

String withHole = 'POLYGON ((1000 1000, 3000 1000, 3000 3000, 1000 3000, 1000 1000), ' +
        '(1500 1500, 2000 1500, 2000 2000, 1500 2000, 1500 1500))'
seen.withHole = regionOf([QuPathDouble.annotation(withHole)])
seen.overlapping = regionOf([QuPathDouble.annotation(square(0, 0, 100)), QuPathDouble.annotation(square(50, 50, 100))])
seen.apart = regionOf([QuPathDouble.annotation(square(0, 0, 100)), QuPathDouble.annotation(square(500, 500, 100))])
String bowtie = 'POLYGON ((0 0, 100 100, 100 0, 0 100, 0 0))' // an outline that crosses itself: invalid
seen.invalidMerged = regionOf([QuPathDouble.annotation(bowtie), QuPathDouble.annotation(square(50, 0, 100))])

// ---------------------------------------------------------------- answers saved with the annotation
def tumour = QuPathDouble.annotation(square(1000, 1000, 500), 'Tumour')
tumour.setDescription('My own note.')
tumour.getMetadata().putAll(['ANTONI question 1': 'Grade?', 'ANTONI answer 1': 'Low.']) // an earlier batch run
QuPathDouble.calls.clear()
select([tumour])
def target = Fx.run { glue.target(false) }
seen.target = [key: target.key, label: target.label, mpp: target.mpp]
def conversation = new Conversation(target.label)
Map engineDone = [answer: 'Tumour.', demo: true, provenance: [ // `done` from a daemon with the engine's provenance
        antoni_bridge: '0.2.0', weights: 'demo-weights', weights_revision: 'abc123', weights_sha256: 'f00d',
        llm: null, tile_encoder: 'virchow2', slide_encoder: 'prism', adapter: true, demo: true,
        decoding: [greedy: true, max_new_tokens: 1024], stop_reason: 'stop']]
Map olderDone = [answer: 'Low grade.', demo: true, stop_reason: 'length'] // an older daemon: hello says what
Map hello = [server: 'antoni-bridge 0.1.0', demo: true, weights: 'demo-weights', llm: null]
[['What is this?', engineDone, [:]], ['What grade?', olderDone, [max_new_tokens: 24]]].each { question, done, options ->
    conversation.ask(question)
    conversation.answered(done.answer, Conversation.provenance(done, hello, options), '2025-01-01T00:00:00Z')
    seen.annotationNotice = Fx.run { glue.save(target, conversation) }
}
seen.saved = [description: tumour.getDescription(), metadata: new LinkedHashMap(tumour.getMetadata()),
              calls: new ArrayList(QuPathDouble.calls)]
def again = Fx.run { glue.target(false) }
seen.resumedTurns = Conversation.resume(again.label, again.savedConversation).turns.size()

// a whole-image answer without a project: in the image's properties, and the panel says so
QuPathDouble.calls.clear()
seen.wholeImageNotice = Fx.run { glue.save(glue.target(true), conversation) }
seen.wholeImageSaveCalls = new ArrayList(QuPathDouble.calls)
seen.wholeImageSaved = [properties: new LinkedHashMap(qupath.imageData.getProperties()), changed: qupath.imageData.changed]

// in a project: in the entry's metadata, where batch writes, and the project saved
def inProject = QuPathDouble.image('file:/slides/c.svs')
def project = new Project(new File('/projects/p/project.qpproj'))
def entry = project.addImage(inProject)
entry.getMetadata().put('Scanner', 'X') // the user's own metadata stays
qupath.project = project
def lastImage = qupath.imageData
qupath.imageData = inProject
QuPathDouble.calls.clear()
def wholeTarget = Fx.run { glue.target(true) }
seen.projectNotice = Fx.run { glue.save(wholeTarget, conversation) }
seen.projectSaved = [metadata: new LinkedHashMap(entry.getMetadata()), written: project.written,
                     properties: new LinkedHashMap(inProject.getProperties()), calls: new ArrayList(QuPathDouble.calls)]
seen.request = [unset: wholeTarget.request([], [:]).containsKey('options'),
                set: wholeTarget.request([], [max_new_tokens: 24]).options]
seen.answerLengthHint = Fx.run { // the daemon's hello names its defaults: the empty field shows them
    String before = glue.panel.answerTokens.promptText
    glue.panel.showState(glue.panel.daemonState() + [decoding: [greedy: true, max_new_tokens: 1024]])
    [before: before, after: glue.panel.answerTokens.promptText, text: glue.panel.answerTokens.text]
}
seen.projectResumedTurns = Conversation.resume('', Fx.run { glue.target(true) }.savedConversation).turns.size()
qupath.project = null
qupath.imageData = lastImage
def before = qupath.imageData
qupath.imageData = QuPathDouble.image('file:/slides/other.svs') // the user opened another image meanwhile
seen.switched = Fx.run {
    try {
        glue.save(target, conversation)
        return null
    } catch (Problem p) {
        return [message: p.message, hint: p.hint]
    }
}
qupath.imageData = before
qupath.imageData = QuPathDouble.image('file:/slides/a.svs#tag')
seen.withFragment = Fx.run { glue.target(true).slide }
qupath.imageData = before

// ---------------------------------------------------------------- QuPath's window
seen.tabs = Fx.run { qupath.analysisTabPane.tabs.collect { it.text } }
seen.commands = qupath.commands.keySet().toList()
seen.shortcut = qupath.commands['Extensions>ANTONI>Ask ANTONI about this region'].accelerator?.name
Stage stage = Fx.run {
    [firstViewer, laterViewer].each { it.view.setPrefSize(200, 200) }
    Stage window = new Stage()
    window.scene = new Scene(new HBox(qupath.analysisTabPane, firstViewer.view, laterViewer.view), 900, 500)
    window.show()
    return window
} as Stage
Closure rightClick = { def viewer, boolean alt ->
    Fx.run {
        int reachedQuPath = 0
        def standIn = { reachedQuPath++ } as javafx.event.EventHandler // where QuPath's own menu handler sits
        viewer.view.addEventHandler(MouseEvent.MOUSE_PRESSED, standIn)
        def press = new MouseEvent(MouseEvent.MOUSE_PRESSED, 20, 20, 120, 120, MouseButton.SECONDARY, 1,
                false, false, alt, false, false, false, true, false, true, false, null)
        Event.fireEvent(viewer.view, press)
        viewer.view.removeEventHandler(MouseEvent.MOUSE_PRESSED, standIn)
        List menus = Window.windows.findAll { it instanceof ContextMenu && it.showing }
        Map result = [ourMenu: menus.collect { it.items*.text }, reachedQuPath: reachedQuPath]
        return result
    }
}
seen.altRightClick = [rightClick(firstViewer, true), rightClick(laterViewer, true)]
Fx.run {
    glue.panel.wholeImage.selected = true
    qupath.analysisTabPane.selectionModel.select(0)
    Window.windows.find { it instanceof ContextMenu && it.showing }.items[0].fire() // "Ask ANTONI about this region..."
}
seen.afterMenuAsk = Fx.run {
    [selection: glue.panel.selection.selected, tab: qupath.analysisTabPane.selectionModel.selectedItem.text]
}
Fx.run { Window.windows.findAll { it instanceof ContextMenu }.each { it.hide() } }
seen.plainRightClick = rightClick(firstViewer, false)
Fx.run {
    glue.panel.wholeImage.selected = true
    qupath.commands['Extensions>ANTONI>Ask ANTONI about this region'].fire()
}
seen.afterShortcutCommand = Fx.run { glue.panel.selection.selected }
seen.panelButtons = Fx.run {
    glue.panel.wholeImage.selected = true
    glue.panel.askRegion.fire()
    [askTurnsToSelection: glue.panel.selection.selected, shortcuts: glue.panel.shortcuts.text,
     buttons: [glue.panel.askRegion.text, glue.panel.describeRegion.text]]
}

// ---------------------------------------------------------------- no daemon: the panel says so
Fx.run { qupath.commands['Extensions>ANTONI>Describe this region'].fire() }
Fx.waitFor('the refusal of a question without a daemon', 10) { glue.panel.message.visible }
seen.noDaemon = Fx.run {
    [message: glue.panel.message.text, connection: glue.panel.connectionProblem.text, status: glue.panel.status.text,
     question: glue.panel.question.text, askEnabled: !glue.panel.askButton.disabled]
}

seen.badLength = Fx.run { // an answer length the daemon would refuse: said at once, nothing sent
    glue.panel.answerTokens.text = 'lots'
    glue.panel.question.text = 'What is this?'
    glue.panel.askButton.fire()
    Map result = [message: glue.panel.message.text, question: glue.panel.question.text]
    glue.panel.answerTokens.text = ''
    return result
}

// ---------------------------------------------------------------- evidence maps and Prism's heads
// The panel's side of the jobs: what it sends (recorded) and what it shows of replies shaped as docs/protocol.md
// says; panel_check.groovy runs them through a real daemon.
def panel = glue.panel
def recorder = new RecordingLink()
Fx.run {
    panel.close()
    panel.@link = recorder
}
Closure reply = { String type, Map content -> Fx.run { panel.showJobEvent([type: type, content: content]) } }
def heads = QuPathDouble.image('file:/slides/heads.svs', null, 0.5)
def headsProject = new Project(new File('/projects/heads/project.qpproj'))
headsProject.addImage(heads)
def neighbour = QuPathDouble.image('file:/slides/neighbour.svs')
headsProject.addImage(neighbour)
qupath.project = headsProject
qupath.imageData = heads
def lesion = QuPathDouble.annotation(square(0, 0, 1024), 'Lesion')
select([lesion])
Map relied = [with_slide: -0.4, no_image: -2.9, other_slide: -2.1, score: 0.81, flagged: false]
Map notRelied = [with_slide: -0.4, no_image: -0.41, other_slide: -0.4, score: 0.01, flagged: true]
[['Is there DAB (brown) staining?', 'Yes.', relied], ['Which stain?', 'H&E.', notRelied]].each { q, a, reliance ->
    Fx.run {
        panel.selection.selected = true
        panel.question.text = q
        panel.askButton.fire()
    }
    reply('token', [text: a])
    reply('done', engineDone + [answer: a, reliance: reliance])
}
seen.reliance = Fx.run {
    [rows: panel.answers.children.collect { it.children[1].text },
     flaggedStyle: panel.answers.children[1].children[1].style, transcript: panel.transcript.text,
     metadata: lesion.getMetadata().findAll { it.key.startsWith('ANTONI reliance') }]
}
recorder.sent.clear()
Fx.run { panel.answers.children[0].children[0].fire() } // "Show evidence" under the first answer
seen.explainRequest = recorder.sent[-1]
seen.whileExplaining = Fx.run {
    [askDisabled: panel.askButton.disabled, evidenceDisabled: panel.answers.children[1].children[0].disabled,
     cancelEnabled: !panel.cancel.disabled]
}
reply('accepted', [job_id: 'j1', position: 0])
reply('progress', [stage: 'occlusion', done: 16, total: 64, rate: 8.0])
seen.explainProgress = Fx.run { panel.progressText.text }
List coords = (0..<4).collectMany { int y -> (0..<4).collect { int x -> [x * 256, y * 256] } }
List values = (0..<16).collect { it == 5 ? 2.0 : (it == 6 ? -0.5 : 0.1) }
Map explained = [method: 'occlusion', tiles: 16, groups: 4, tile_size: 256, coords: coords, values: values,
                 group_of: (0..<16).collect { it.intdiv(4) }, log_likelihood: -0.4,
                 faithfulness: [deletion_area: 0.21, random_area: 0.55, gap: 0.34, random_orders: 8],
                 reliance: relied, refined: [1], provenance: [demo: true], timings: [total_s: 1.5]]
QuPathDouble.calls.clear()
reply('done', explained)
Closure evidenceTiles = { qupath.imageData.hierarchy.getTileObjects().findAll { it.pathClass?.toString() == 'ANTONI evidence' } }
seen.evidence = Fx.run {
    List tiles = evidenceTiles()
    def strongest = tiles.max { it.measurementList.get('ANTONI evidence') }
    def weakest = tiles.min { it.measurementList.get('ANTONI evidence') }
    Closure rgb = { int c -> [(c >> 16) & 0xff, (c >> 8) & 0xff, c & 0xff] }
    [count: tiles.size(), message: panel.message.text, calls: new ArrayList(QuPathDouble.calls),
     strongest: [bounds: strongest.ROI.geometry.envelopeInternal.with { [minX, minY, maxX, maxY] },
                 roi: strongest.ROI.roiName, value: strongest.measurementList.get('ANTONI evidence'),
                 colour: rgb(strongest.color), tile: strongest.isTile()],
     weakest: [value: weakest.measurementList.get('ANTONI evidence'), colour: rgb(weakest.color)],
     saved: lesion.getMetadata().findAll { it.key.startsWith('ANTONI evidence') }]
}
Fx.run { panel.answers.children[0].children[0].fire() }
reply('done', explained) // shown again: the earlier map is replaced, not doubled
seen.evidenceAgain = Fx.run { evidenceTiles().size() }
Fx.run { panel.answers.children[1].children[0].fire() }
reply('cancelled', [:])
seen.explainCancelled = Fx.run { [message: panel.message.text, askEnabled: !panel.askButton.disabled] }
seen.removed = Fx.run {
    panel.removeEvidence.fire()
    [message: panel.message.text, left: evidenceTiles().size(), tiles: qupath.imageData.hierarchy.getTileObjects().size()]
}

// zero-shot labels: refused with fewer than two, else sent and shown as bars, likeliest first
seen.oneLabel = Fx.run {
    panel.labels.text = 'tumour'
    panel.zeroShot.fire()
    panel.message.text
}
recorder.sent.clear()
Fx.run {
    panel.labels.text = 'tumour, stroma, , necrosis'
    panel.zeroShot.fire()
}
seen.zeroShotRequest = recorder.sent[-1]
reply('done', [labels: ['tumour', 'stroma', 'necrosis'], probabilities: [0.2, 0.7, 0.1], map: null, model: 'prism',
               provenance: [:], timings: [total_s: 0.2]])
seen.zeroShot = Fx.run {
    [rows: panel.zeroShotResults.children.collect { row -> row.children.drop(1)*.text.join(' ') },
     bars: panel.zeroShotResults.children.collect { it.children[0].progress }, message: panel.message.text]
}

// zero-shot labels with a map: the likeliest label's drawn at once, another's on a click, removed by one button
recorder.sent.clear()
Fx.run {
    panel.zeroShotMap.selected = true
    panel.zeroShot.fire()
    panel.zeroShotMap.selected = false
}
seen.zeroShotMapRequest = recorder.sent[-1]
List groupProbabilities = [[0.2, 0.7, 0.1], [0.5, 0.4, 0.1], [0.1, 0.1, 0.8], [0.3, 0.3, 0.4]]
reply('done', [labels: ['tumour', 'stroma', 'necrosis'], probabilities: [0.2, 0.7, 0.1], model: 'prism',
               map: [tiles: 16, groups: 4, tile_size: 256, coords: coords, group_of: (0..<16).collect { it.intdiv(4) },
                     probabilities: groupProbabilities], provenance: [:], timings: [total_s: 0.2]])
Closure zeroShotTiles = {
    Fx.run {
        qupath.imageData.hierarchy.getTileObjects().findAll { it.pathClass?.toString() == 'Prism zero-shot' }.collect {
            [bounds: it.ROI.geometry.envelopeInternal.with { [minX, minY, maxX, maxY] }, tile: it.isTile(),
             measurements: new LinkedHashMap(it.measurementList.asMap()),
             colour: [(it.color >> 16) & 0xff, (it.color >> 8) & 0xff, it.color & 0xff]]
        }
    }
}
seen.zeroShotMap = [tiles: zeroShotTiles(), message: Fx.run { panel.message.text },
                    links: Fx.run { panel.zeroShotResults.children.collect { it.children[2].class.simpleName } }]
Fx.run { panel.zeroShotResults.children[2].children[2].fire() } // "necrosis", the least likely
seen.zeroShotMapClicked = [tiles: zeroShotTiles(), message: Fx.run { panel.message.text }]
seen.zeroShotMapRemoved = Fx.run {
    panel.removeEvidence.fire()
    [message: panel.message.text, button: panel.removeEvidence.text,
     tiles: qupath.imageData.hierarchy.getTileObjects().size()]
}

// Prism's report draft: streamed into the conversation, marked as Prism's, saved, never sent to ANTONI
recorder.sent.clear()
Fx.run { panel.draftReport.fire() }
seen.reportRequest = recorder.sent[-1]
reply('token', [text: 'Diagnosis: invasive'])
reply('token', [text: ' carcinoma.'])
seen.reportStreaming = Fx.run { panel.transcript.text.readLines()[-1] }
reply('done', [report: 'Diagnosis: invasive carcinoma.', stop_reason: 'stop', model: 'prism',
               label: 'Draft by Prism (not ANTONI)', provenance: [demo: true], timings: [total_s: 0.3]])
recorder.sent.clear()
Fx.run {
    panel.question.text = 'And the grade?'
    panel.askButton.fire()
}
seen.report = Fx.run {
    [transcript: panel.transcript.text, savedRoles: Protocol.fromJson("{\"t\": ${lesion.getMetadata()['ANTONI conversation']}}").t*.role,
     nextAsk: recorder.sent[-1].content.conversation*.role]
}
reply('cancelled', [:])

// similar slides: within the open project when asked, project images open as entries, other files as files
recorder.sent.clear()
Fx.run {
    panel.withinProject.selected = true
    panel.similarSlides.fire()
}
seen.similarRequest = recorder.sent[-1]
reply('done', [results: [[slide: '/slides/neighbour.svs', region: null, similarity: 0.93, thumbnail: null, fingerprint: 'a'],
                         [slide: '/elsewhere/x.svs', region: [type: 'Polygon', coordinates: []], similarity: 0.5,
                          thumbnail: null, fingerprint: 'b']], indexed: 7, timings: [total_s: 0.01]])
seen.similar = Fx.run { [links: panel.similarResults.children*.text, message: panel.message.text] }
QuPathDouble.calls.clear()
Fx.run { panel.similarResults.children[0].fire() }
seen.openedEntry = [calls: QuPathDouble.calls.findAll { it.startsWith('open') }, same: qupath.imageData.is(neighbour)]
QuPathDouble.calls.clear()
Fx.run { panel.similarResults.children[1].fire() }
seen.openedFile = [calls: QuPathDouble.calls.findAll { it.startsWith('open') },
                   now: qupath.imageData.server.URIs[0].path]
qupath.project = null
qupath.imageData = before

def reinstalled = Fx.run { QuPathGlue.install(qupath) }
seen.tabsAfterReinstall = Fx.run { qupath.analysisTabPane.tabs.collect { it.text } }
seen.shortcutAfterReinstall = qupath.commands['Extensions>ANTONI>Ask ANTONI about this region'].accelerator?.name
seen.altRightClickAfterReinstall = rightClick(firstViewer, true)
Fx.run { Window.windows.findAll { it instanceof ContextMenu }.each { it.hide() } }

// ---------------------------------------------------------------- the tab undocked into a window of its own
Stage undocked = Fx.run {
    reinstalled.tab.contextMenu.items[0].fire() // "Undock tab", as the user right-clicks the tab
    Stage window = reinstalled.panel.root.scene.window as Stage
    window.iconified = true // minimised out of the way
    return window
} as Stage
Fx.waitFor('the undocked panel minimised', 10) { undocked.iconified }
Fx.run { reinstalled.showPanel() }
Fx.waitFor('the undocked panel shown again', 10) { !undocked.iconified }
seen.undocked = Fx.run { [inPane: reinstalled.tab.tabPane != null, iconified: undocked.iconified] }
Fx.run {
    reinstalled.panel.close()
    stage.close()
}
println(Protocol.toJson(seen))
Fx.exit(0)
