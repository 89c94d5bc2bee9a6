package antonibridge

import javafx.application.Platform
import javafx.event.EventHandler
import javafx.geometry.Insets
import javafx.scene.control.Button
import javafx.scene.control.CheckBox
import javafx.scene.control.Hyperlink
import javafx.scene.control.Label
import javafx.scene.control.Labeled
import javafx.scene.control.ProgressBar
import javafx.scene.control.RadioButton
import javafx.scene.control.TextArea
import javafx.scene.control.TextField
import javafx.scene.control.TitledPane
import javafx.scene.control.ToggleGroup
import javafx.scene.input.Clipboard
import javafx.scene.input.ClipboardContent
import javafx.scene.input.KeyCode
import javafx.scene.input.KeyEvent
import javafx.scene.layout.GridPane
import javafx.scene.layout.HBox
import javafx.scene.layout.Priority
import javafx.scene.layout.Region
import javafx.scene.layout.VBox
import javafx.scene.Scene
import javafx.stage.Stage

import java.time.OffsetDateTime
import java.time.temporal.ChronoUnit
import java.util.prefs.Preferences

/**
 * The chat panel: the conversation with answers streaming in, each answer's reliance on the slide and a
 * "Show evidence" button under it, Prism's heads (zero-shot labels, a report draft, similar slides), progress
 * while a slide is embedded, cancel, a status line and the connection settings. It knows nothing of QuPath:
 * `targets` (QuPathGlue) answers `target(boolean wholeImage)` with an AskTarget (or throws a Problem saying why
 * not), keeps answers, maps and drafts (`save`, `saveEvidence`, `saveConversation`: a notice to show, or null),
 * draws and removes evidence and zero-shot maps and opens slides. One job runs at a time. Runs on the JavaFX
 * thread; the link reports through runLater.
 */
class ChatPanel {
    static final Map<String, String> STAGES = [
            'loading'       : 'Loading the models',
            'reading'       : 'Reading the slide',
            'tissue'        : 'Finding tissue',
            'tiling'        : 'Tiling',
            'tile-embedding': 'Embedding tiles',
            'slide-encoding': 'Encoding the slide',
            'generating'    : 'Writing the answer',
            'latents'       : 'Encoding the slide',
            'grouping'      : 'Grouping the tiles',
            'occlusion'     : 'Leaving out each group',
            'refining'      : 'Refining the top groups',
            'faithfulness'  : 'Checking the map against random orders',
    ]
    static final Map<String, String> UNITS = ['tile-embedding': 'tiles', occlusion: 'passes', refining: 'passes',
                                              faithfulness: 'passes'] // explain: slide-encoder passes
    static final Map<String, String> JOBS = [ask: 'question', explain: 'evidence map', zero_shot: 'zero-shot labels',
                                             report: "Prism's report draft", similar: 'similar slides search']
    static final int SIMILAR_TOP = 10
    private static final String ERROR_STYLE = '-fx-text-fill: #b00020;'
    static final int MAX_ANSWER_TOKENS = 8192 // the daemon refuses more (docs/protocol.md, option bounds)

    final VBox root = new VBox(6)
    final Label status = new Label('Connecting to the daemon...')
    final Label connectionProblem = new Label()
    final RadioButton wholeImage = new RadioButton('Whole image')
    final RadioButton selection = new RadioButton('Selected annotations')
    final TextArea transcript = new TextArea()
    final ProgressBar progress = new ProgressBar(0)
    final Label progressText = new Label()
    final Button cancel = new Button('Cancel')
    final Label message = new Label()
    final TextArea question = new TextArea()
    final Button askButton = new Button('Ask')
    final Button newConversation = new Button('New conversation')
    final Button copy = new Button('Copy conversation')
    final TextField connectionFile = new TextField()
    final TextField address = new TextField()
    final TextField answerTokens = new TextField()
    final Button apply = new Button('Apply and reconnect')
    final Button askRegion = new Button('Ask ANTONI about this region')
    final Button describeRegion = new Button('Describe this region')
    final Label shortcuts = new Label("Also: ${QuPathGlue.SHORTCUT_TEXT} or Alt+right-click in the viewer")
    final VBox answers = new VBox(4) // under the conversation: per answer, its reliance and "Show evidence"
    final Button removeEvidence = new Button('Remove maps') // evidence and zero-shot maps
    final TextField labels = new TextField()
    final Button zeroShot = new Button('Zero-shot labels')
    final CheckBox zeroShotMap = new CheckBox('with a map over the slide')
    final VBox zeroShotResults = new VBox(2)
    final Button draftReport = new Button('Draft report')
    final Button similarSlides = new Button('Similar slides')
    final CheckBox withinProject = new CheckBox("Only this project's images")
    final VBox similarResults = new VBox(2)

    private final Object targets
    static final String SETTINGS_NODE = 'antoni-bridge/qupath' // also read by AntoniBridge.ask
    private final Preferences settings = Preferences.userRoot().node(SETTINGS_NODE)
    private final Map<String, Conversation> conversations = [:]
    private final Map<String, AskTarget> shownTargets = [:] // what each conversation is about
    private DaemonLink link // not final: the glue test puts a recording link in its place
    private Map daemon = [:] // the link's latest state
    private Map running // the job running: kind (ask, explain...), target, answer (explain); null when idle
    private Map askedOptions // the options that question was sent with: only those the user set
    private String shownKey

    ChatPanel(Object targets) {
        this.targets = targets
        layOut()
        connectionFile.text = settings.get('connectionFile', DaemonLink.defaultConnectionFile().path)
        address.text = settings.get('address', '')
        answerTokens.text = settings.get('answerTokens', '')
        link = new DaemonLink(new File(connectionFile.text), address.text.trim(), { String kind, Map data ->
            Platform.runLater({ kind == 'state' ? showState(data) : showJobEvent(data) } as Runnable)
        }).start()
    }

    /** Ask about the selected annotation(s): the question box gets the focus (menu, shortcut, context menu). */
    void focusOnSelection() {
        selection.selected = true
        question.requestFocus()
    }

    /** Ask `text`, or the question in the box when null. */
    void ask(String text = null) {
        String asked = (text ?: question.text)?.trim()
        if (refuseWhileRunning()) {
            return
        }
        if (!asked) {
            say('Type a question first.', 'then press Ask or Ctrl+Enter')
            return
        }
        Map options = optionsSet()
        AskTarget target = options == null ? null : currentTarget()
        if (target == null) {
            return
        }
        Conversation conversation = conversationOf(target)
        conversation.ask(asked)
        if (text == null) {
            question.clear()
        }
        askedOptions = options
        start('ask', target, target.request(conversation.wire(), options))
        transcript.appendText('ANTONI: ')
    }

    /**
     * The evidence map of the answer at `index` in the shown conversation (`explain`: the conversation up to its
     * question and the answer's text, about the same slide or region), drawn over the slide when it comes.
     */
    void showEvidence(int index) {
        AskTarget target = shownTargets[shownKey]
        if (refuseWhileRunning() || target == null) {
            return
        }
        Conversation conversation = conversations[shownKey]
        Map answer = conversation.turns[index]
        Map content = target.source() + [conversation: conversation.wireBefore(index), answer: answer.content]
        start('explain', target, content, [answer: answer])
    }

    /** Prism's zero-shot probabilities for the labels in the field, about the selection or the whole image. */
    void classify() {
        List<String> names = (labels.text ?: '').split(',').collect { it.trim() }.findAll().unique()
        if (refuseWhileRunning()) {
            return
        }
        if (names.size() < 2 || names.size() > 64) {
            say("Zero-shot labels need 2 to 64 labels, separated by commas (${names.size()} given).",
                    'e.g. adenocarcinoma, squamous cell carcinoma, normal lung')
            return
        }
        AskTarget target = currentTarget()
        if (target != null) {
            zeroShotResults.children.clear()
            Map content = target.source() + [labels: names] + (zeroShotMap.selected ? [map: true] : [:])
            start('zero_shot', target, content)
        }
    }

    /** Prism's report draft, streamed into the conversation and marked as Prism's (another model than ANTONI). */
    void draft() {
        AskTarget target = refuseWhileRunning() ? null : currentTarget()
        if (target != null) {
            conversationOf(target)
            start('report', target, target.source())
            transcript.appendText("\n${Conversation.PRISM}: ")
        }
    }

    /** The slides most like the selection or the whole image, among those embedded on the daemon's computer. */
    void findSimilar() {
        AskTarget target = refuseWhileRunning() ? null : currentTarget()
        if (target == null) {
            return
        }
        Map content = target.source() + [top: SIMILAR_TOP]
        String project = withinProject.selected ? targets.projectFile() : null
        if (project) {
            content.within = project
        }
        similarResults.children.clear()
        start('similar', target, content)
    }

    void close() {
        link.close()
    }

    /** What the panel asks about and saves with (QuPathGlue in QuPath): for scripts such as the self-test. */
    Object getGlue() {
        targets
    }

    /** The link's latest report on the daemon: connected, server, demo, address, problem. */
    Map daemonState() {
        new LinkedHashMap(daemon)
    }

    /** A report in a window of its own, also put on the clipboard (for a bug report). */
    void showReport(String title, String text) {
        ClipboardContent content = new ClipboardContent()
        content.putString(text)
        Clipboard.systemClipboard.setContent(content)
        TextArea area = new TextArea(text)
        area.editable = false
        area.style = '-fx-font-family: monospace;'
        Stage window = new Stage()
        window.title = "${title} (copied to the clipboard)"
        window.scene = new Scene(area, 720, 360)
        window.show()
    }

    // ------------------------------------------------------------------ reports from the link

    private void showState(Map state) {
        daemon = state
        if (state.connected) {
            String weights = state.demo ? 'demo weights (a synthetic task only, no pathology)' : 'real weights'
            List parts = ["Connected to ${state.server} at ${state.address}", weights, queueText(state.queue as Map)]
            status.text = parts.findAll().join(' \u00b7 ')
        } else {
            status.text = 'Not connected to the daemon.'
        }
        Map problem = state.problem as Map
        connectionProblem.text = problem ? "${problem.message} Hint: ${problem.hint}." : ''
        reveal(connectionProblem, problem != null)
        if (state.notice) {
            inform(state.notice as String)
        }
        Object length = (state.decoding as Map)?.max_new_tokens
        answerTokens.promptText = "the daemon's default${length != null ? " (${length as long} tokens)" : ''}"
    }

    private String queueText(Map queue) {
        if (queue == null) {
            return null // until the first status reply
        }
        if (running != null && queue.position != null) {
            String job = JOBS[running.kind]
            return queue.position == 0 ? "your ${job} is running" : "your ${job} is number ${queue.position} in the queue"
        }
        return queue.running ? "busy: ${1 + (queue.waiting as int)} question(s) in the queue" : 'idle'
    }

    private void showJobEvent(Map event) {
        if (running == null) {
            return // the end of a job the panel already gave up on
        }
        Map content = event.content as Map
        switch (event.type) {
            case 'accepted':
                int position = content.position as int
                progressText.text = position > 0 ? "Waiting: ${position} job(s) ahead in the daemon's queue" :
                        'Starting'
                break
            case 'progress':
                showProgress(content)
                break
            case 'token':
                transcript.appendText(content.text as String)
                break
            case 'done':
                finished(content)
                break
            default: // error, cancelled, busy: a question goes back to the box, nothing is saved
                failed(event.type as String, content)
        }
    }

    private void finished(Map content) {
        Map job = running
        idle()
        try {
            switch (job.kind) {
                case 'ask':
                    answered(job.target as AskTarget, content)
                    break
                case 'explain':
                    explained(job.target as AskTarget, job.answer as Map, content)
                    break
                case 'zero_shot':
                    showZeroShot(job.target as AskTarget, content)
                    break
                case 'report':
                    drafted(job.target as AskTarget, content)
                    break
                default:
                    showSimilar(content)
            }
        } catch (Problem p) {
            say(p.message, p.hint)
        } catch (Exception exc) { // a QuPath that changed under us: one sentence here, the trace in the log
            exc.printStackTrace()
            say("The ${JOBS[job.kind]} could not be shown (${exc.class.simpleName}: ${exc.message}).",
                    'see the QuPath log')
        }
    }

    private void showProgress(Map content) {
        double done = content.done as double
        double total = content.total as double
        double rate = content.rate as double
        String stage = STAGES[content.stage] ?: content.stage
        if (content.stage == 'generating' || total <= 1) { // no count to show
            progress.progress = ProgressBar.INDETERMINATE_PROGRESS
            progressText.text = stage
            return
        }
        progress.progress = done / total
        String unit = UNITS[content.stage] ?: 'items'
        String speed = rate > 0 ? String.format(' \u00b7 %.1f %s/s', rate, unit) : ''
        progressText.text = "${stage}: ${done as long} of ${total as long} ${unit}${speed}"
    }

    private void answered(AskTarget target, Map content) {
        Conversation conversation = conversations[target.key]
        conversation.answered(content.answer as String, Conversation.provenance(content, daemon, askedOptions), now(),
                content.reliance as Map)
        show(target.key)
        saved(target) { targets.save(target, conversation) }
    }

    private void explained(AskTarget target, Map answer, Map content) {
        EvidenceMap map = new EvidenceMap(content)
        int tiles = targets.showEvidence(target, map)
        if (content.reliance instanceof Map && !(answer.reliance instanceof Map)) {
            answer.reliance = content.reliance // an answer from before the daemon measured it
        }
        show(shownKey)
        inform("Evidence: ${tiles} tiles in the class \"${EvidenceMap.CLASS_NAME}\" over the slide (darker red: " +
                "the answer depends more on it); ${map.summary()}.")
        saved(target) { targets.saveEvidence(target, conversations[target.key], answer, map) }
    }

    private void drafted(AskTarget target, Map content) {
        Conversation conversation = conversations[target.key]
        Map provenance = (content.provenance instanceof Map ? content.provenance as Map : [:]) +
                [model: content.model, stop_reason: content.stop_reason, front_end: 'qupath']
        conversation.drafted(content.report as String, content.label as String, provenance, now())
        show(target.key)
        saved(target) { targets.saveConversation(target, conversation) }
    }

    /** Keep what `save` saves with the target; its notice or problem goes to the message line. */
    private void saved(AskTarget target, Closure<String> save) {
        try {
            String notice = save()
            if (notice) {
                inform(notice)
            }
        } catch (Problem p) {
            say(p.message, p.hint)
        } catch (Exception exc) {
            exc.printStackTrace()
            say("The answer could not be saved with ${target.label} (${exc.message}).",
                    'copy the conversation to keep it')
        }
    }

    /**
     * Prism's probabilities as a small bar list, likeliest first. With a map (docs/protocol.md, ZeroShotMap) each
     * label is a link that draws its map over the slide; the likeliest label's is drawn at once.
     */
    private void showZeroShot(AskTarget target, Map content) {
        List<String> names = content.labels as List<String>
        List<Double> probabilities = (content.probabilities as List).collect { it as double }
        List<Integer> order = (0..<names.size()).toList().sort { -probabilities[it] }
        Map map = content.map instanceof Map ? content.map as Map : null
        zeroShotResults.children.setAll(order.collect { int i ->
            ProgressBar bar = new ProgressBar(probabilities[i])
            bar.prefWidth = 120
            Labeled name = map == null ? new Label(names[i]) : new Hyperlink(names[i])
            name.minWidth = 60
            if (map != null) {
                (name as Hyperlink).onAction = { showZeroShotMap(target, map, names, i) } as EventHandler
            }
            HBox row = new HBox(6, bar, new Label(String.format('%5.1f %%', 100 * probabilities[i])), name)
            row.id = "zero-shot-${i}"
            return row
        })
        inform("Zero-shot labels by Prism (${content.model}), not by ANTONI.")
        if (map != null) {
            showZeroShotMap(target, map, names, order[0])
        }
    }

    /** One label's zero-shot map over the slide: its probability per tile, replacing the zero-shot map shown. */
    private void showZeroShotMap(AskTarget target, Map map, List<String> names, int label) {
        try {
            int tiles = targets.showEvidence(target, EvidenceMap.zeroShot(map, names, label))
            inform("Zero-shot labels by Prism, not by ANTONI. Map of \"${names[label]}\": ${tiles} tiles in the " +
                    "class \"${EvidenceMap.ZERO_SHOT_CLASS}\" (darker red: likelier, over ${map.groups as long} " +
                    'groups of tiles); click another label to map it.')
        } catch (Problem p) {
            say(p.message, p.hint)
        }
    }

    /** The similar slides as links: a click opens the project image, or the file. */
    private void showSimilar(Map content) {
        List results = content.results as List
        similarResults.children.setAll(results.collect { Map result ->
            String slide = result.slide as String
            boolean inProject = targets.projectImage(slide) != null
            String where = inProject ? 'project image' : 'file'
            String region = result.region != null ? ', a region of it' : ''
            Hyperlink link = new Hyperlink(String.format('%.3f  %s (%s%s)', result.similarity as double,
                    new File(slide).name, where, region))
            link.userData = result
            link.onAction = { open(slide) } as EventHandler
            return link
        })
        long indexed = content.indexed as long
        inform(results ? "${results.size()} similar slides of ${indexed} indexed on the daemon's computer." :
                "No similar slide: the daemon has indexed ${indexed} slides and regions (each one asked about is).")
    }

    private void open(String slide) {
        try {
            targets.openSlide(slide)
        } catch (Problem p) {
            say(p.message, p.hint)
        }
    }

    private void failed(String type, Map content) {
        Map job = running
        AskTarget target = job.target as AskTarget
        String withdrawn = job.kind == 'ask' ? conversations[target.key].withdraw() : null
        if (withdrawn && !question.text.trim()) {
            question.text = withdrawn
        }
        idle()
        if (job.kind in ['ask', 'report', 'explain']) {
            show(shownKey) // without the partial answer or draft
        }
        if (type == 'cancelled' && content.reason == 'client-gone') {
            say("The daemon cancelled the ${JOBS[job.kind]}: it heard nothing from the panel for too long.",
                    'the computer may be overloaded; try again')
        } else if (type == 'cancelled') {
            inform(job.kind == 'ask' ? 'Cancelled; the question is back in the box.' : "Cancelled the ${JOBS[job.kind]}.")
        } else if (type == 'busy') {
            say("The daemon's queue is full (${content.capacity as int} jobs).",
                    'wait for one to finish, then try again')
        } else {
            say(content.message as String, content.hint as String)
        }
    }

    // ------------------------------------------------------------------ the panel itself

    private AskTarget currentTarget() {
        try {
            return targets.target(wholeImage.selected) as AskTarget
        } catch (Problem p) {
            say(p.message, p.hint)
        } catch (Exception exc) { // a QuPath that changed under us: one sentence here, the trace in the log
            exc.printStackTrace()
            say("The image or selection could not be read (${exc.class.simpleName}: ${exc.message}).",
                    'see the QuPath log')
        }
        return null
    }

    private Conversation conversationOf(AskTarget target) {
        Conversation conversation = conversations[target.key]
        if (conversation == null) {
            conversation = Conversation.resume(target.label, target.savedConversation)
            conversations[target.key] = conversation
        }
        shownTargets[target.key] = target
        return conversation
    }

    private boolean refuseWhileRunning() {
        if (running != null) {
            say("The ${JOBS[running.kind]} is still running.", 'wait for it or cancel it')
        }
        return running != null
    }

    private void start(String kind, AskTarget target, Map content, Map more = [:]) {
        running = [kind: kind, target: target] + more
        say(null, null)
        if (kind in ['ask', 'report']) {
            show(target.key)
        }
        working(true)
        link.job(kind, content)
    }

    private void show(String key) {
        shownKey = key
        Conversation conversation = conversations[key]
        transcript.text = conversation?.transcript() ?: ''
        transcript.positionCaret(transcript.length)
        answers.children.setAll((conversation?.answerIndexes() ?: []).withIndex().collect { int index, int number ->
            answerRow(conversation.turns[index], index, number + 1)
        })
    }

    /** Under the conversation, per answer: its reliance on the slide (a flagged one marked) and "Show evidence". */
    private HBox answerRow(Map answer, int index, int number) {
        Map reliance = answer.reliance as Map
        Label figure = new Label("Answer ${number}: " + (reliance ? Conversation.relianceText(reliance) :
                'reliance not measured (an older daemon)'))
        figure.wrapText = true
        if (reliance?.flagged) {
            figure.style = ERROR_STYLE + ' -fx-font-weight: bold;'
        }
        Button evidence = new Button('Show evidence')
        evidence.onAction = { showEvidence(index) } as EventHandler
        evidence.disable = running != null
        HBox row = new HBox(6, evidence, figure)
        row.id = "answer-${number}"
        HBox.setHgrow(figure, Priority.ALWAYS)
        return row
    }

    private static String now() {
        OffsetDateTime.now().truncatedTo(ChronoUnit.SECONDS).toString()
    }

    /** A problem with the question: one sentence and what to do, in red. */
    private void say(String sentence, String hint) {
        message.style = ERROR_STYLE
        message.text = sentence ? (hint ? "${sentence} Hint: ${hint}." : sentence) : ''
        reveal(message, sentence != null)
    }

    private void inform(String sentence) {
        message.style = ''
        message.text = sentence
        reveal(message, true)
    }

    private static void reveal(Label label, boolean shown) {
        label.visible = shown
        label.managed = shown
    }

    private void working(boolean busy) {
        [askButton, describeRegion, newConversation, zeroShot, draftReport, similarSlides].each { it.disable = busy }
        answers.children.each { ((it as HBox).children[0] as Button).disable = busy }
        cancel.disable = !busy
        progress.progress = busy ? ProgressBar.INDETERMINATE_PROGRESS : 0
        progressText.text = busy ? "Sending the ${JOBS[running?.kind] ?: 'question'}" : ''
    }

    private void idle() {
        running = null
        working(false)
    }

    private void startNewConversation() {
        Conversation old = conversations[shownKey]
        if (shownKey != null && running == null) {
            conversations[shownKey] = new Conversation(old.label) // also hides one saved with the annotation
            show(shownKey)
        }
    }

    private void copyConversation() {
        ClipboardContent content = new ClipboardContent()
        content.putString(transcript.text)
        Clipboard.systemClipboard.setContent(content)
        inform('The conversation is on the clipboard.')
    }

    /**
     * The options the user set: the daemon fills in the rest from its defaults (shown in the empty field). Null,
     * and the panel says why, when the answer length is not one the daemon takes.
     */
    private Map optionsSet() {
        String text = answerTokens.text.trim()
        if (!text) {
            return [:]
        }
        if (text.isInteger() && (text as int) in 1..MAX_ANSWER_TOKENS) {
            return [max_new_tokens: text as int]
        }
        say("The answer length must be a whole number of tokens from 1 to ${MAX_ANSWER_TOKENS}.",
                "or leave it empty for the daemon's default")
        return null
    }

    private void applySettings() {
        if (optionsSet() == null) {
            return
        }
        answerTokens.text = answerTokens.text.trim()
        settings.put('connectionFile', connectionFile.text.trim())
        settings.put('address', address.text.trim())
        settings.put('answerTokens', answerTokens.text)
        link.reconfigure(new File(connectionFile.text.trim()), address.text.trim())
        inform('Reconnecting with the new settings.')
    }

    private void layOut() {
        root.padding = new Insets(8)
        [connectionProblem, message].each {
            it.wrapText = true
            it.minHeight = Region.USE_PREF_SIZE // the whole sentence, even when the panel is short of room
            it.style = ERROR_STYLE
            reveal(it, false)
        }
        status.wrapText = true
        ToggleGroup scope = new ToggleGroup()
        wholeImage.toggleGroup = scope
        selection.toggleGroup = scope
        selection.selected = true
        transcript.editable = false
        transcript.wrapText = true
        transcript.prefRowCount = 14
        VBox.setVgrow(transcript, Priority.ALWAYS)
        progress.maxWidth = Double.MAX_VALUE
        HBox.setHgrow(progress, Priority.ALWAYS)
        question.wrapText = true
        question.prefRowCount = 3
        question.promptText = 'Ask about the slide or the selected annotation (Ctrl+Enter sends)'
        question.addEventFilter(KeyEvent.KEY_PRESSED, { KeyEvent e ->
            if (e.code == KeyCode.ENTER && e.shortcutDown) {
                e.consume()
                ask()
            }
        } as EventHandler)
        askButton.defaultButton = false
        askButton.onAction = { ask() } as EventHandler
        cancel.onAction = { link.cancel() } as EventHandler
        newConversation.onAction = { startNewConversation() } as EventHandler
        copy.onAction = { copyConversation() } as EventHandler
        apply.onAction = { applySettings() } as EventHandler
        askRegion.onAction = { targets.askAboutRegion() } as EventHandler // the Alt+right-click menu's actions
        describeRegion.onAction = { targets.describeRegion() } as EventHandler
        removeEvidence.onAction = { removeEvidenceMaps() } as EventHandler
        zeroShot.onAction = { classify() } as EventHandler
        draftReport.onAction = { draft() } as EventHandler
        similarSlides.onAction = { findSimilar() } as EventHandler
        shortcuts.style = '-fx-opacity: 0.75;'
        working(false)
        root.children.addAll(status, connectionProblem, new HBox(6, askRegion, describeRegion), shortcuts,
                new HBox(12, new Label('About:'), selection, wholeImage),
                transcript, answers, removeEvidence, new HBox(6, progress, cancel),
                progressText, message, question, new HBox(6, askButton, newConversation, copy), prismPane(),
                settingsPane())
    }

    private void removeEvidenceMaps() {
        Map<String, Integer> removed = targets.removeMaps()
        List<String> parts = []
        if (removed[EvidenceMap.CLASS_NAME]) {
            parts << "${removed[EvidenceMap.CLASS_NAME]} evidence tiles".toString()
        }
        if (removed[EvidenceMap.ZERO_SHOT_CLASS]) {
            parts << "${removed[EvidenceMap.ZERO_SHOT_CLASS]} zero-shot tiles".toString()
        }
        inform(parts ? "Removed ${parts.join(' and ')} from the image." : 'The image shows no map.')
    }

    /** Prism's own heads, on the same slide latents: another model than ANTONI, and labelled so. */
    private TitledPane prismPane() {
        labels.promptText = 'labels, separated by commas'
        HBox.setHgrow(labels, Priority.ALWAYS)
        withinProject.selected = false
        VBox box = new VBox(6, new Label("The slide encoder's own heads: another model than ANTONI."),
                new HBox(6, labels, zeroShot), zeroShotMap, zeroShotResults,
                new HBox(6, draftReport, similarSlides), withinProject, similarResults)
        TitledPane pane = new TitledPane('Prism: zero-shot labels, report draft, similar slides', box)
        pane.expanded = false // room for the conversation; one click opens it
        return pane
    }

    private TitledPane settingsPane() {
        GridPane grid = new GridPane()
        grid.hgap = 6
        grid.vgap = 6
        connectionFile.promptText = '~/.antoni-bridge/daemon.json'
        address.promptText = 'from the connection file (e.g. tcp://127.0.0.1:5555 through a tunnel)'
        answerTokens.promptText = "the daemon's default"
        grid.addRow(0, new Label('Connection file'), connectionFile)
        grid.addRow(1, new Label('Address'), address)
        grid.addRow(2, new Label('Answer length'), answerTokens)
        grid.add(apply, 1, 3)
        GridPane.setHgrow(connectionFile, Priority.ALWAYS)
        TitledPane pane = new TitledPane('Connection settings', grid)
        pane.expanded = false
        return pane
    }
}
