// Sends every test vector of tests/vectors (see its README) to a real daemon with the QuPath panel's own
// client code: its Protocol class signs (with the test key, to check each vector's signature, and with the
// daemon's key to send it) and parses the replies, over the real JeroMQ. Arguments: the daemon's connection
// file and the vectors folder. Prints one JSON line: per vector whether the panel's signature equals the
// vector's, and the replies to it as [type, code, parent: request or none] (a job's progress and tokens
// left out). tests/test_vectors.py runs it and compares with the vectors' `expect`.
import antonibridge.ConnectionFile
import antonibridge.Protocol
import org.zeromq.ZMQ

import java.nio.charset.StandardCharsets

String VECTOR_DATE = '"date":1764633600.0' // every vector's date, replaced by the time of sending
long EXTRA_WAIT_MS = 300 // after the expected replies: time for a reply too many to show up

byte[] utf8(String text) {
    text.getBytes(StandardCharsets.UTF_8)
}

/** The panel's signature (Protocol.sign, private to the panel's code and called as it is) as text. */
String signature(Protocol protocol, String header, String content) {
    new String(protocol.sign(utf8(header), utf8(content)), StandardCharsets.US_ASCII)
}

void send(ZMQ.Socket socket, List<byte[]> frames) {
    frames.eachWithIndex { byte[] frame, int i -> socket.send(frame, i < frames.size() - 1 ? ZMQ.SNDMORE : 0) }
}

List<byte[]> receive(ZMQ.Socket socket) {
    byte[] first = socket.recv(0)
    if (first == null) {
        return null
    }
    List<byte[]> frames = [first]
    while (socket.hasReceiveMore()) {
        frames << socket.recv(0)
    }
    return frames
}

File connectionFile = new File(args[0])
File folder = new File(args[1])
ConnectionFile connection = ConnectionFile.read(connectionFile)
Protocol daemon = new Protocol(connection.key)
Protocol test = new Protocol(new File(folder, 'test-key.txt').getText('UTF-8').trim())
ZMQ.Context context = ZMQ.context(1)
ZMQ.Socket socket = context.socket(ZMQ.DEALER)
socket.setLinger(0)
socket.setReceiveTimeOut(25)
socket.connect(connection.address)

Map signatures = [:]
Map replies = [:]
long lastBeat = 0
folder.listFiles().findAll { it.name.endsWith('.json') }.sort { it.name }.each { File file ->
    String name = file.name.substring(0, file.name.length() - '.json'.length())
    Map vector = Protocol.fromJson(file.getText('UTF-8'))
    List<String> frames = new ArrayList<String>(vector.frames as List<String>)
    Map how = vector.send as Map
    if (frames.size() == 4) {
        signatures[name] = signature(test, frames[2], frames[3]) == frames[1]
    }
    String msgId = "vector-${name}-${UUID.randomUUID().toString()[0..7]}"
    if (frames.size() >= 3) {
        double date = System.currentTimeMillis() / 1000.0d + ((how.date_offset_s ?: 0) as double)
        frames[2] = frames[2].replace("\"msg_id\":\"vector-${name}\"", "\"msg_id\":\"${msgId}\"")
                .replace(VECTOR_DATE, String.format(Locale.ROOT, '"date":%.3f', date))
    }
    if (frames.size() == 4) {
        frames[1] = signature(how.key == 'test' ? test : daemon, frames[2], frames[3])
    }
    ((how.times ?: 1) as int).times { send(socket, frames.collect { utf8(it) }) }

    List got = []
    int expected = (vector.expect as List).size()
    long deadline = System.currentTimeMillis() + 60000
    Long settled = null
    while (System.currentTimeMillis() < deadline && (settled == null || System.currentTimeMillis() < settled)) {
        if (System.currentTimeMillis() - lastBeat >= 250) { // the daemon cancels the jobs of silent clients
            send(socket, daemon.message('heartbeat', [:])[1] as List<byte[]>)
            lastBeat = System.currentTimeMillis()
        }
        List<byte[]> received = receive(socket)
        if (received == null) {
            continue
        }
        Map message = daemon.parse(received)
        if (message.parentId in [msgId, null] && !(message.type in ['progress', 'token'])) {
            Map content = message.content as Map
            got << [type: message.type, code: content.code, parent: message.parentId == null ? 'none' : 'request']
            settled = got.size() >= expected ? System.currentTimeMillis() + EXTRA_WAIT_MS : null
        }
    }
    replies[name] = got
}
socket.close()
context.term()
println(Protocol.toJson([signatures: signatures, replies: replies]))
