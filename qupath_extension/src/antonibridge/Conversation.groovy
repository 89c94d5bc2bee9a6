package antonibridge

/**
 * One conversation about one slide or region: the turns sent to the daemon (role and content) and, for each
 * answer, what answered (its provenance), when, and how much it relied on the slide (`reliance`). Prism's report
 * drafts sit between the turns (role `prism`) for the reader, but are never sent to ANTONI: they are another
 * model's words. Follow-ups send every turn again; the daemon reuses its cache for the same slide or region.
 */
class Conversation {
    static final String MARKER = '--- ANTONI-Alpha conversation ---'
    static final String DEMO_NOTE = '[demo weights: trained only on a synthetic stain/piece-count task, they know no pathology]'
    static final String PRISM = 'Prism (draft report by another model, not ANTONI)'
    static final List<String> ROLES = ['user', 'assistant', 'prism']
    static final List<String> SENT = ['user', 'assistant'] // what ANTONI sees of the conversation

    final String label // what it is about, e.g. annotation "Tumor" in slide.svs
    final List<Map> turns = []

    Conversation(String label, List<Map> turns = []) {
        this.label = label
        turns.each { this.turns << new LinkedHashMap(it) }
    }

    /** A conversation saved by `toJson`, or a new one when the text is missing or unreadable. */
    static Conversation resume(String label, String json) {
        if (json) {
            try {
                List saved = Protocol.fromJson("{\"turns\": ${json}}").turns as List
                boolean turns = saved.every {
                    it instanceof Map && it.role in ROLES && it.content instanceof String
                }
                if (turns) {
                    return new Conversation(label, saved as List<Map>)
                }
            } catch (Problem ignored) {
                // someone edited the metadata: start afresh rather than fail the question
            }
        }
        return new Conversation(label)
    }

    void ask(String question) {
        turns << [role: 'user', content: question]
    }

    /** The unanswered question, taken back when its job ends without an answer. */
    String withdraw() {
        turns && turns[-1].role == 'user' ? turns.remove(turns.size() - 1).content : null
    }

    /**
     * `provenance`: what answered (see `provenance`); `reliance`: the `done` reply's measure of how much the
     * answer depends on the slide (null from a daemon without it); both kept with the turn.
     */
    void answered(String answer, Map provenance, String time, Map reliance = null) {
        Map turn = [role: 'assistant', content: answer, time: time, provenance: provenance]
        if (reliance != null) {
            turn.reliance = reliance
        }
        turns << turn
    }

    /** Prism's report draft, shown in the conversation and saved with it, but not sent to ANTONI. */
    void drafted(String report, String label, Map provenance, String time) {
        turns << [role: 'prism', content: report, label: label, time: time, provenance: provenance]
    }

    /** The answers' positions in `turns`, in order: the panel puts an evidence button under each. */
    List<Integer> answerIndexes() {
        (0..<turns.size()).findAll { turns[it].role == 'assistant' }
    }

    /** The conversation as ANTONI saw it when it gave the answer at `index`: up to and with its question. */
    List<Map> wireBefore(int index) {
        sent(turns.subList(0, index))
    }

    /**
     * What answered, as saved with the answer: the `done` reply's `provenance` whole (weights, their revision and
     * hash, LLM, adapter, demo, decoding, stop reason, antoni-bridge version), else what the daemon's `hello` said
     * (a daemon older than provenance on `done`); with `front_end` and the options the user set (`options_set`).
     */
    static Map provenance(Map done, Map hello, Map optionsSet) {
        Map found = done.provenance instanceof Map ? new LinkedHashMap(done.provenance as Map) : fromHello(done, hello)
        return found + [front_end: 'qupath', options_set: optionsSet]
    }

    private static Map fromHello(Map done, Map hello) {
        Map found = hello.provenance instanceof Map ? new LinkedHashMap(hello.provenance as Map) : [
                antoni_bridge: (hello.server as String)?.replaceFirst('^antoni-bridge ', ''),
                weights      : hello.weights,
                llm          : hello.llm,
                adapter      : true, // `ask` answers through ANTONI's adapter; only `view` turns it off
        ]
        found.demo = done.demo ?: hello.demo
        if (done.stop_reason) {
            found.stop_reason = done.stop_reason
        }
        return found
    }

    /** The turns as the protocol's `conversation`: role and content only, without Prism's drafts. */
    List<Map> wire() {
        sent(turns)
    }

    private static List<Map> sent(List<Map> turns) {
        turns.findAll { it.role in SENT }.collect { [role: it.role, content: it.content] }
    }

    String toJson() {
        Protocol.toJson(turns)
    }

    String lastQuestion() {
        turns.reverse().find { it.role == 'user' }?.content
    }

    Map lastAnswer() {
        turns.reverse().find { it.role == 'assistant' }
    }

    /** The readable conversation: what the panel shows and "copy conversation" copies. */
    String transcript() {
        StringBuilder text = new StringBuilder("About ${label}\n")
        turns.each { turn ->
            if (turn.role == 'user') {
                text << "\nYou: ${turn.content}\n"
            } else if (turn.role == 'prism') {
                text << "\n${PRISM}: ${(turn.content as String).trim()}\n"
                text << "  (${turn.label ?: 'Draft by Prism (not ANTONI)'}, ${turn.time})\n"
            } else {
                Map provenance = (turn.provenance ?: [:]) as Map
                String weights = provenance.demo ? 'demo' : 'real'
                text << "ANTONI: ${(turn.content as String).trim()}\n"
                text << "  (antoni-bridge ${provenance.antoni_bridge}, ${weights} weights, ${turn.time})\n"
                if (provenance.demo) {
                    text << "  ${DEMO_NOTE}\n"
                }
                if (turn.reliance instanceof Map) {
                    text << "  ${relianceText(turn.reliance as Map)}\n"
                }
            }
        }
        return text.toString()
    }

    /** The reliance figure as the panel shows it next to an answer; a flagged answer says so first. */
    static String relianceText(Map reliance) {
        String score = String.format('%.2f', reliance.score as double)
        return reliance.flagged ? "FLAGGED: this answer does not depend on the image (reliance on the slide ${score})" :
                "Reliance on the slide: ${score}"
    }

    /** An annotation's description with this conversation after the user's own text, which is kept. */
    String describe(String previous) {
        String own = (previous ?: '').split(java.util.regex.Pattern.quote(MARKER), 2)[0].trim()
        String record = "${MARKER}\n${transcript()}"
        return own ? "${own}\n\n${record}" : record
    }
}
