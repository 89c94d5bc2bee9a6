package antonibridge

import javafx.application.Platform

import java.util.concurrent.LinkedBlockingQueue
import java.util.concurrent.TimeUnit
import java.util.prefs.Preferences

/**
 * For scripts, e.g. Automate > Run for project: ask the daemon about an image, or one annotation of it, and
 * wait for the answer, with the panel's connection settings. Each call is a new one-question conversation.
 * The startup script publishes this class as the system property "antonibridge.AntoniBridge" (the panel's
 * classes are not on the scripts' class path); docs/qupath.md shows the two lines a script needs.
 */
class AntoniBridge {
    static final long CONNECT_MS = 10000
    static final long ANSWER_MS = 30L * 60 * 1000 // a whole slide embedded on a CPU takes minutes

    /**
     * The answer's text; a Problem (one sentence and a hint) when there is none. Not on QuPath's UI thread.
     * `maxNewTokens`: the answer's length in tokens; null for the daemon's default.
     */
    static String ask(Object imageData, Object annotation, String question, Integer maxNewTokens = null) {
        if (Platform.isFxApplicationThread()) {
            throw new Problem('ui-thread', "AntoniBridge.ask waits for the daemon, so it cannot run on QuPath's UI thread.",
                    "remove 'guiscript=true' from the script's first line")
        }
        if (imageData == null) {
            throw new Problem('bad-target', 'No image was given.', 'pass getCurrentImageData() or a project entry\'s readImageData()')
        }
        AskTarget target = QuPathGlue.targetOf(imageData, annotation == null ? null : [annotation])
        Preferences settings = Preferences.userRoot().node(ChatPanel.SETTINGS_NODE)
        File connection = new File(settings.get('connectionFile', DaemonLink.defaultConnectionFile().path))
        LinkedBlockingQueue<Map> reports = new LinkedBlockingQueue<Map>()
        DaemonLink link = new DaemonLink(connection, settings.get('address', ''), { String kind, Map data ->
            reports.put([kind: kind, data: data])
        }).start()
        try {
            connected(reports)
            Map options = maxNewTokens ? [max_new_tokens: maxNewTokens] : [:] // none: the daemon's default
            link.ask(target.request([[role: 'user', content: question]], options))
            return answer(reports)
        } finally {
            link.close()
        }
    }

    private static void connected(LinkedBlockingQueue<Map> reports) {
        long deadline = System.currentTimeMillis() + CONNECT_MS
        Map problem = null
        while (System.currentTimeMillis() < deadline) {
            Map report = reports.poll(100, TimeUnit.MILLISECONDS)
            if (report?.kind == 'state') {
                if (report.data.connected) {
                    return
                }
                problem = report.data.problem as Map ?: problem
            }
        }
        throw problem ? new Problem(problem.code as String, problem.message as String, problem.hint as String) :
                new Problem('not-connected', 'The daemon did not answer within 10 s.', 'start it with `antoni-bridge serve`')
    }

    private static String answer(LinkedBlockingQueue<Map> reports) {
        long deadline = System.currentTimeMillis() + ANSWER_MS
        while (System.currentTimeMillis() < deadline) {
            Map report = reports.poll(100, TimeUnit.MILLISECONDS)
            if (report?.kind != 'job' || !(report.data.type in DaemonLink.TERMINAL)) {
                continue
            }
            Map content = report.data.content as Map
            if (report.data.type == 'done') {
                return content.answer as String
            }
            String message = content.message ?: "The question ended without an answer (${report.data.type})."
            throw new Problem((content.code ?: report.data.type) as String, message, (content.hint ?: 'ask again') as String)
        }
        throw new Problem('no-answer', 'No answer within 30 minutes.', 'see the daemon\'s log')
    }
}
