package antonibridge

/**
 * One conversation about one slide or region: the turns sent to the daemon (role and content) and, for each
 * answer, which model and weights gave it and when. Follow-ups send every turn again; the daemon reuses its
 * cache for the same slide or region.
 */
class Conversation {
    static final String MARKER = '--- ANTONI-Alpha conversation ---'
    static final String DEMO_NOTE = '[demo weights: random, the answer means nothing]'

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
                    it instanceof Map && it.role in ['user', 'assistant'] && it.content instanceof String
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

    /** `provenance`: which weights answered (weightsId, llm, adapter), kept with the turn. */
    void answered(String answer, String model, boolean demo, String time, Map provenance = [:]) {
        turns << ([role: 'assistant', content: answer, model: model, weights: demo ? 'demo' : 'real', time: time] +
                provenance)
    }

    /** The turns as the protocol's `conversation`: role and content only. */
    List<Map> wire() {
        turns.collect { [role: it.role, content: it.content] }
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
            } else {
                text << "ANTONI: ${(turn.content as String).trim()}\n"
                text << "  (${turn.model}, ${turn.weights} weights, ${turn.time})\n"
                if (turn.weights == 'demo') {
                    text << "  ${DEMO_NOTE}\n"
                }
            }
        }
        return text.toString()
    }

    /** An annotation's description with this conversation after the user's own text, which is kept. */
    String describe(String previous) {
        String own = (previous ?: '').split(java.util.regex.Pattern.quote(MARKER), 2)[0].trim()
        String record = "${MARKER}\n${transcript()}"
        return own ? "${own}\n\n${record}" : record
    }
}
