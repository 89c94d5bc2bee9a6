package antonibridge

import org.zeromq.ZMQ

import java.util.concurrent.LinkedBlockingQueue
import java.util.concurrent.TimeUnit

/**
 * The panel's one connection to the daemon. Every socket call happens on one thread, "antoni-bridge-link",
 * because JeroMQ sockets are neither thread-safe nor safe to interrupt: callers queue commands, and the
 * thread reports through `listener(kind, data)`, called on the link thread (a UI hands it to its own thread).
 *
 * Reports: ('state', [connected, server, demo, weights, llm, address, problem: [code, message, hint] or null, queue, notice])
 * and ('job', [type, content]) for the events of the one job running (a question, an evidence map, Prism's
 * heads...): accepted, progress, token, then exactly one of done, error, cancelled or busy. A job the link itself must end (daemon gone, restarted)
 * ends with an 'error' whose content has code, message and hint.
 */
class DaemonLink {
    static final long HEARTBEAT_MS = 250 // protocol: while a job runs; the daemon cancels jobs of silent clients
    static final long STATUS_EVERY_MS = 1000 // queue position, and a sign of life
    static final long ANSWER_WITHIN_MS = 5000 // protocol: a daemon silent this long is not running
    static final long RETRY_MS = 1000 // reading the connection file again while not connected
    static final int RECEIVE_MS = 25
    static final List<String> TERMINAL = ['done', 'error', 'cancelled', 'busy']
    static final String START_HINT = 'start it with `antoni-bridge serve`'

    private final Closure listener
    private final LinkedBlockingQueue<Closure> commands = new LinkedBlockingQueue<Closure>()
    private final Thread thread
    private volatile boolean closing

    // Touched only by the link thread from here on.
    private File connectionFile
    private String addressOverride
    private ZMQ.Context context
    private ZMQ.Socket socket
    private Protocol protocol
    private ConnectionFile connection
    private ConnectionFile refused // a daemon we will not talk to (key or version mismatch) until it changes
    private final Map<String, Map> pending = [:] // request msg_id -> [type, deadline]
    private Map job // [askId, jobId, cancel, deadline]
    private Map state = [connected: false, server: null, demo: null, weights: null, llm: null, address: null,
                         problem: null, queue: null, notice: null]
    private Map published
    private long lastSent, lastStatus, lastFileCheck, nextAttempt

    DaemonLink(File connectionFile, String addressOverride, Closure listener) {
        this.connectionFile = connectionFile
        this.addressOverride = addressOverride ?: null
        this.listener = listener
        this.thread = new Thread({ loop() } as Runnable, 'antoni-bridge-link')
        this.thread.daemon = true
    }

    /** The connection file the daemon writes: ANTONI_BRIDGE_CONNECTION_FILE or ~/.antoni-bridge/daemon.json. */
    static File defaultConnectionFile() {
        String override = System.getenv('ANTONI_BRIDGE_CONNECTION_FILE')
        override ? new File(override) : new File(System.getProperty('user.home'), '.antoni-bridge/daemon.json')
    }

    DaemonLink start() {
        thread.start()
        return this
    }

    /** Ask a question (content as in the protocol's `ask`); the answer comes as 'job' reports. */
    void ask(Map content) { job('ask', content) }

    /** Start a job of the protocol (`ask`, `explain`, `zero_shot`, `report`, `similar`...): one at a time. */
    void job(String type, Map content) { commands.put { doJob(type, content) } }

    void cancel() { commands.put { doCancel() } }

    void reconfigure(File connectionFile, String addressOverride) {
        commands.put {
            this.connectionFile = connectionFile
            this.addressOverride = addressOverride ?: null
            refused = null
            endJob('error', problem('settings', 'The connection settings changed during the question.', 'ask again'))
            dropSocket()
            nextAttempt = 0
        }
    }

    /** Stop the thread; the socket closes with linger 0, so nothing waits for undelivered messages. */
    void close() {
        closing = true
        commands.put {}
        thread.join(2000)
    }

    // ------------------------------------------------------------------ the link thread

    private void loop() {
        context = ZMQ.context(1)
        try {
            while (!closing) {
                try {
                    step()
                } catch (Exception exc) { // a bug: say so, and start again from a fresh socket
                    exc.printStackTrace()
                    lost(problem('internal', "The panel's connection failed (${exc}).",
                            'see the QuPath log; reconnecting'))
                    nextAttempt = now() + RETRY_MS
                }
                publish()
            }
        } finally {
            dropSocket()
            context.term()
        }
    }

    private void step() {
        runCommands(socket == null ? Math.max(1L, nextAttempt - now()) : 0L)
        if (closing) {
            return
        }
        if (socket == null) {
            if (now() >= nextAttempt) {
                connect()
            }
        } else {
            receive()
            keepAlive()
        }
    }

    private void runCommands(long waitMs) {
        Closure command = commands.poll(Math.min(waitMs, 100L), TimeUnit.MILLISECONDS)
        while (command != null) {
            command.call()
            command = commands.poll()
        }
    }

    private void connect() {
        nextAttempt = now() + RETRY_MS
        ConnectionFile found
        try {
            found = ConnectionFile.read(connectionFile)
        } catch (Problem p) {
            state.problem = asMap(p)
            return
        }
        if (found.sameDaemon(refused)) {
            return
        }
        if (local(found) && !processAlive(found.pid)) {
            state.problem = problem('stopped',
                    "The daemon (process ${found.pid}) stopped without removing its connection file.", START_HINT)
            return
        }
        if (found.protocol != Protocol.VERSION) {
            refuse(found, new Problem('bad-version',
                    "The daemon speaks protocol ${found.protocol}, this panel ${Protocol.VERSION}.",
                    'update the older of the two: antoni-bridge, or this panel with `antoni-bridge qupath install`'))
            return
        }
        connection = found
        protocol = new Protocol(found.key)
        state.address = addressOverride ?: found.address
        socket = context.socket(ZMQ.DEALER)
        socket.setLinger(0)
        socket.setReceiveTimeOut(RECEIVE_MS)
        socket.setMaxMsgSize(Protocol.MAX_MESSAGE_BYTES)
        socket.connect(state.address as String)
        lastFileCheck = now()
        request('hello')
    }

    private void receive() {
        byte[] first = socket.recv(0)
        if (first == null) {
            return
        }
        List<byte[]> frames = [first]
        while (socket.hasReceiveMore()) {
            frames << socket.recv(0)
        }
        Map message
        try {
            message = protocol.parse(frames)
        } catch (Problem p) {
            refusedReply(p)
            return
        }
        dispatch(message)
    }

    private void dispatch(Map message) {
        if (job != null && message.parentId == job.askId) {
            jobEvent(message.type as String, message.content as Map)
            return
        }
        Map request = pending.remove(message.parentId)
        if (request?.type == 'hello') {
            hello(message)
        } else if (request?.type == 'status' && message.type == 'status') {
            status(message.content as Map)
        } // a cancel's reply needs nothing: the job's own terminal event follows
    }

    private void hello(Map message) {
        Map content = message.content as Map
        if (message.type == 'error') {
            refuse(connection, new Problem(content.code as String, content.message as String,
                    content.hint as String))
            return
        }
        state.connected = true
        state.server = content.server
        state.demo = content.demo
        state.weights = content.weights
        state.llm = content.llm
        state.provenance = content.provenance // newer daemons: what answers (the weights' revision and hash...)
        state.decoding = content.decoding // the daemon's defaults for the options a question does not set
        state.problem = null
        lastStatus = 0
    }

    private void status(Map content) {
        Map queue = content.queue as Map
        Map running = queue.running as Map
        List waiting = queue.waiting as List
        Integer position = null
        if (job?.jobId != null) {
            position = running?.job_id == job.jobId ? 0 : waiting.find { it.job_id == job.jobId }?.position as Integer
        }
        state.queue = [running: running != null, waiting: waiting.size(), position: position,
                       stage: running?.stage]
    }

    private void jobEvent(String type, Map content) {
        if (type == 'accepted') {
            job.jobId = content.job_id
            if (job.cancel) {
                request('cancel', [job_id: job.jobId])
            }
        }
        if (type in TERMINAL) {
            job = null
            lastStatus = 0 // the queue changed: show it at once
        }
        report('job', [type: type, content: content])
    }

    private void keepAlive() {
        long now = now()
        if (job != null && now - lastSent >= HEARTBEAT_MS) {
            send(protocol.message('heartbeat', [:]))
        }
        if (state.connected && now - lastStatus >= STATUS_EVERY_MS && !pending.values().any { it.type == 'status' }) {
            lastStatus = now
            request('status')
        }
        boolean unaccepted = job != null && job.jobId == null && job.deadline < now
        if (unaccepted || pending.values().any { it.deadline < now }) {
            noAnswer()
        } else if (now - lastFileCheck >= RETRY_MS) {
            lastFileCheck = now
            checkDaemonStillThere()
        }
    }

    /** A restarted daemon rewrites the connection file; a stopped one removes it or leaves a dead pid. */
    private void checkDaemonStillThere() {
        ConnectionFile current
        try {
            current = ConnectionFile.read(connectionFile)
        } catch (Problem p) {
            lost(problem('stopped', 'The daemon stopped.', START_HINT))
            return
        }
        if (!current.sameDaemon(connection)) {
            replaced()
        } else if (local(connection) && !processAlive(connection.pid)) {
            lost(problem('stopped', "The daemon (process ${connection.pid}) stopped.", START_HINT))
        }
    }

    private void noAnswer() {
        try {
            if (!ConnectionFile.read(connectionFile).sameDaemon(connection)) {
                replaced()
                return
            }
        } catch (Problem p) {
            lost(asMap(p))
            return
        }
        long seconds = ANSWER_WITHIN_MS.intdiv(1000)
        lost(problem('no-answer', "The daemon at ${state.address} did not answer within ${seconds} s.",
                'it may be hung: restart it with `antoni-bridge serve`'))
    }

    private void replaced() {
        endJob('error', problem('restarted', 'The daemon restarted during the question, so its answer is lost.',
                'ask again'))
        dropSocket()
        state.notice = 'The daemon restarted; connecting to the new one.'
        nextAttempt = 0
    }

    private void lost(Map why) {
        endJob('error', why)
        dropSocket()
        state.problem = why
    }

    private void refusedReply(Problem p) {
        if (p.code == 'replayed') {
            return
        }
        if (p.code == 'bad-signature') {
            try {
                if (!ConnectionFile.read(connectionFile).sameDaemon(connection)) {
                    replaced()
                    return
                }
            } catch (Problem ignored) {
                // no file now: the mismatch is the problem to show
            }
        }
        refuse(connection, p)
    }

    /** Stop talking to this daemon until its connection file changes (it restarts) or the settings do. */
    private void refuse(ConnectionFile daemon, Problem p) {
        refused = daemon
        lost(asMap(p))
    }

    private void doJob(String type, Map content) {
        if (job != null) {
            report('job', [type: 'error', content: problem('busy-here', 'A question is already being answered.',
                    'wait for its answer or cancel it')])
            return
        }
        if (!state.connected) {
            Map why = state.problem ?: problem('not-connected', 'The panel is still connecting to the daemon.',
                    'ask again in a moment')
            report('job', [type: 'error', content: why])
            return
        }
        List message
        try {
            message = protocol.message(type, content)
        } catch (Problem p) {
            report('job', [type: 'error', content: asMap(p)])
            return
        }
        job = [askId: message[0], jobId: null, cancel: false, deadline: now() + ANSWER_WITHIN_MS]
        send(message)
    }

    private void doCancel() {
        if (job == null) {
            return
        }
        if (socket == null) {
            endJob('cancelled', [:])
        } else if (job.jobId != null) {
            request('cancel', [job_id: job.jobId])
        } else {
            job.cancel = true // sent once the daemon names the job
        }
    }

    private void endJob(String type, Map content) {
        if (job != null) {
            job = null
            report('job', [type: type, content: content])
        }
    }

    private String request(String type, Map content = [:]) {
        List message = protocol.message(type, content)
        pending.put(message[0] as String, [type: type, deadline: now() + ANSWER_WITHIN_MS])
        send(message)
        return message[0]
    }

    private void send(List message) {
        List<byte[]> frames = message[1] as List<byte[]>
        for (int i = 0; i < frames.size() - 1; i++) {
            socket.sendMore(frames[i])
        }
        socket.send(frames[-1], 0)
        lastSent = now()
    }

    private void dropSocket() {
        if (socket != null) {
            socket.close()
            socket = null
        }
        pending.clear()
        state.connected = false
        state.queue = null
    }

    private void publish() {
        Map snapshot = new LinkedHashMap(state)
        if (snapshot != published) {
            published = snapshot
            state.notice = null // said once
            report('state', snapshot)
        }
    }

    private void report(String kind, Map data) {
        try {
            listener.call(kind, data)
        } catch (Exception exc) { // a listener's bug must not end the link
            System.err.println("antoni-bridge: the panel failed to show a ${kind} report: ${exc}")
        }
    }

    /** A daemon on this machine, whose process id can be checked (not one reached through a tunnel). */
    private boolean local(ConnectionFile daemon) {
        addressOverride == null && daemon.address ==~ /tcp:\/\/(127\.[0-9.]+|localhost|\[::1\]):\d+/
    }

    private static boolean processAlive(long pid) {
        // through reflection: Groovy 2.4 cannot call a static method of an interface
        Optional handle = (Optional) ProcessHandle.getMethod('of', long).invoke(null, pid)
        return handle.isPresent() && ((ProcessHandle) handle.get()).isAlive()
    }

    private static Map problem(String code, String message, String hint) {
        [code: code, message: message, hint: hint]
    }

    private static Map asMap(Problem p) {
        problem(p.code, p.message, p.hint)
    }

    private static long now() {
        System.nanoTime().intdiv(1000000L)
    }
}
