package antonibridge

/** What a client needs to reach the daemon, from the file the daemon rewrites at every start. */
class ConnectionFile {
    String address
    String key
    long pid
    int protocol

    /** The file's connection, or a Problem naming the cause and the fix. */
    static ConnectionFile read(File file) {
        if (!file.isFile()) {
            throw new Problem('not-running', "The daemon is not running (no connection file at ${file}).",
                    'start it with `antoni-bridge serve`')
        }
        try {
            Map values = Protocol.fromJson(file.getText('UTF-8'))
            def connection = new ConnectionFile(address: values.address as String, key: values.key as String,
                    pid: (values.pid as Number).longValue(), protocol: (values.protocol as Number).intValue())
            if (!connection.address || !connection.key) {
                throw new IllegalArgumentException('address or key missing')
            }
            return connection
        } catch (Problem | IllegalArgumentException | NullPointerException | ClassCastException | IOException exc) {
            throw new Problem('damaged', "The connection file ${file} is damaged (${exc.message}).",
                    'restart the daemon with `antoni-bridge serve`')
        }
    }

    boolean sameDaemon(ConnectionFile other) {
        other != null && other.address == address && other.key == key && other.pid == pid
    }
}
