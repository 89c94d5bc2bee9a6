package antonibridge

import javafx.application.Platform
import javafx.event.EventHandler
import javafx.geometry.Insets
import javafx.scene.control.Button
import javafx.scene.control.Label
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
import javafx.scene.layout.VBox
import javafx.scene.Scene
import javafx.stage.Stage

import java.time.OffsetDateTime
import java.time.temporal.ChronoUnit
import java.util.prefs.Preferences

/**
 * The chat panel: the conversation with answers streaming in, progress while a slide is embedded, cancel,
 * a status line and the connection settings. It knows nothing of QuPath: `targets` answers
 * `target(boolean wholeImage)` with an AskTarget (or throws a Problem saying why not) and
 * `save(target, conversation)` keeps an answer (returning a notice to show, or null). Runs on the JavaFX thread;
 * the link reports through runLater.
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
    ]
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

    private final Object targets
    static final String SETTINGS_NODE = 'antoni-bridge/qupath' // also read by AntoniBridge.ask
    private final Preferences settings = Preferences.userRoot().node(SETTINGS_NODE)
    private final Map<String, Conversation> conversations = [:]
    private final DaemonLink link
    private Map daemon = [:] // the link's latest state
    private AskTarget asking // the target of the question being answered; null when idle
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
        if (asking != null) {
            say('A question is already being answered.', 'wait for its answer or cancel it')
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
        Conversation conversation = conversations[target.key]
        if (conversation == null) {
            conversation = Conversation.resume(target.label, target.savedConversation)
            conversations[target.key] = conversation
        }
        conversation.ask(asked)
        if (text == null) {
            question.clear()
        }
        asking = target
        say(null, null)
        show(target.key)
        transcript.appendText('ANTONI: ')
        working(true)
        askedOptions = options
        link.ask(target.request(conversation.wire(), options))
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
        if (asking != null && queue.position != null) {
            return queue.position == 0 ? 'your question is running' :
                    "your question is number ${queue.position} in the queue"
        }
        return queue.running ? "busy: ${1 + (queue.waiting as int)} question(s) in the queue" : 'idle'
    }

    private void showJobEvent(Map event) {
        if (asking == null) {
            return // the end of a question the panel already gave up on
        }
        Map content = event.content as Map
        switch (event.type) {
            case 'accepted':
                int position = content.position as int
                progressText.text = position > 0 ? "Waiting: ${position} question(s) ahead in the daemon's queue" :
                        'Starting'
                break
            case 'progress':
                showProgress(content)
                break
            case 'token':
                transcript.appendText(content.text as String)
                break
            case 'done':
                answered(content)
                break
            default: // error, cancelled, busy: the question goes back to the box, nothing is saved
                unanswered(event.type as String, content)
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
        String unit = content.stage == 'tile-embedding' ? 'tiles' : 'items'
        String speed = rate > 0 ? String.format(' \u00b7 %.1f %s/s', rate, unit) : ''
        progressText.text = "${stage}: ${done as long} of ${total as long} ${unit}${speed}"
    }

    private void answered(Map content) {
        AskTarget target = asking
        Conversation conversation = conversations[target.key]
        String time = OffsetDateTime.now().truncatedTo(ChronoUnit.SECONDS).toString()
        conversation.answered(content.answer as String, Conversation.provenance(content, daemon, askedOptions), time)
        idle()
        show(target.key)
        try {
            String notice = targets.save(target, conversation)
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

    private void unanswered(String type, Map content) {
        AskTarget target = asking
        String withdrawn = conversations[target.key].withdraw()
        if (withdrawn && !question.text.trim()) {
            question.text = withdrawn
        }
        idle()
        show(target.key)
        if (type == 'cancelled') {
            inform('Cancelled; the question is back in the box.')
        } else if (type == 'busy') {
            say("The daemon's queue is full (${content.capacity as int} questions).",
                    'wait for one to finish, then ask again')
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

    private void show(String key) {
        shownKey = key
        transcript.text = conversations[key]?.transcript() ?: ''
        transcript.positionCaret(transcript.length)
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
        askButton.disable = busy
        describeRegion.disable = busy
        newConversation.disable = busy
        cancel.disable = !busy
        progress.progress = busy ? ProgressBar.INDETERMINATE_PROGRESS : 0
        progressText.text = busy ? 'Sending the question' : ''
    }

    private void idle() {
        asking = null
        working(false)
    }

    private void startNewConversation() {
        Conversation old = conversations[shownKey]
        if (shownKey != null && asking == null) {
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
        shortcuts.style = '-fx-opacity: 0.75;'
        working(false)
        root.children.addAll(status, connectionProblem, new HBox(6, askRegion, describeRegion), shortcuts,
                new HBox(12, new Label('About:'), selection, wholeImage),
                transcript, new HBox(6, progress, cancel), progressText, message, question,
                new HBox(6, askButton, newConversation, copy), settingsPane())
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
