import antonibridge.DaemonLink

/**
 * For glue_check.groovy: a DaemonLink that starts no thread and sends nothing, but records the jobs the panel
 * starts and cancels, so that a check can answer them with replies shaped as docs/protocol.md says (the jobs'
 * real round trip through a daemon is tests/groovy/panel_check.groovy's).
 */
class RecordingLink extends DaemonLink {
    final List<Map> sent = []

    RecordingLink() {
        super(new File('/nonexistent/daemon.json'), null, { String kind, Map data -> })
    }

    @Override
    void job(String type, Map content) {
        sent << [type: type, content: content]
    }

    @Override
    void cancel() {
        sent << [type: 'cancel']
    }

    @Override
    void close() {
    }
}
