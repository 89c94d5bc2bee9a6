package antonibridge

import com.google.gson.Gson
import com.google.gson.GsonBuilder
import com.google.gson.JsonParseException

import javax.crypto.Mac
import javax.crypto.spec.SecretKeySpec
import java.nio.charset.StandardCharsets
import java.security.MessageDigest

/**
 * Protocol v1 on the wire (docs/protocol.md), without sockets: signing and checking the four frames of a
 * message, strict JSON. Gson does the JSON because QuPath ships it (QuPath has no groovy-json).
 */
class Protocol {
    static final int VERSION = 1
    static final String TAG = 'antoni/1'
    static final long MAX_MESSAGE_BYTES = 32L * 1024 * 1024
    private static final int REPLAY_MEMORY = 10000
    private static final Gson GSON = new GsonBuilder().disableHtmlEscaping().serializeNulls().create()

    final String session = UUID.randomUUID().toString().replace('-', '')
    private final SecretKeySpec key
    private final Set<String> seen = new LinkedHashSet<String>()

    Protocol(String key) {
        this.key = new SecretKeySpec(key.getBytes(StandardCharsets.UTF_8), 'HmacSHA256')
    }

    /** The frames of a new message and its id: [msgId, frames]. */
    List message(String type, Map content) {
        String msgId = UUID.randomUUID().toString().replace('-', '')
        Map header = [msg_id: msgId, type: type, session: session, date: System.currentTimeMillis() / 1000.0d,
                      version: VERSION]
        byte[] headerBytes = bytes(header)
        byte[] contentBytes = bytes(content)
        long size = headerBytes.length + contentBytes.length
        if (size > MAX_MESSAGE_BYTES) {
            throw new Problem('too-large', "The request has ${(size >> 20)} MiB; the daemon accepts at most 32 MiB.",
                    'select a smaller or simpler region (fewer vertices), or ask about the whole image')
        }
        List<byte[]> frames = [TAG.getBytes(StandardCharsets.US_ASCII), sign(headerBytes, contentBytes),
                               headerBytes, contentBytes]
        return [msgId, frames]
    }

    /** A checked message [type, content, msgId, parentId] from the frames, or a Problem saying what is wrong. */
    Map parse(List<byte[]> frames) {
        String tag = frames ? new String(frames[0], StandardCharsets.US_ASCII) : ''
        if (tag.startsWith('antoni/') && tag != TAG) {
            String theirs = tag.substring('antoni/'.length())
            throw new Problem('bad-version', "The daemon speaks protocol ${theirs}, this panel ${VERSION}.",
                    'update the older of the two: antoni-bridge, or this panel with `antoni-bridge qupath install`')
        }
        if (frames.size() != 4 || tag != TAG) {
            throw new Problem('bad-frames', "The reply is not an antoni-bridge message (${frames.size()} frames).",
                    'check that the address in the settings is the daemon\'s')
        }
        byte[] expected = sign(frames[2], frames[3])
        if (!MessageDigest.isEqual(expected, frames[1])) {
            throw new Problem('bad-signature',
                    'Key mismatch: the daemon signs with another key than the connection file holds.',
                    'the daemon restarted, or another one answers at this address: ' +
                            'restart it with `antoni-bridge serve`')
        }
        String signature = new String(frames[1], StandardCharsets.US_ASCII)
        if (!seen.add(signature)) {
            throw new Problem('replayed', 'A message from the daemon arrived twice (a replay).', 'ignore it')
        }
        if (seen.size() > REPLAY_MEMORY) {
            seen.remove(seen.iterator().next())
        }
        Map header = fromJson(new String(frames[2], StandardCharsets.UTF_8))
        Map content = fromJson(new String(frames[3], StandardCharsets.UTF_8))
        if (header.version != VERSION) {
            throw new Problem('bad-version', "The daemon speaks protocol ${header.version}, this panel ${VERSION}.",
                    'update the older of the two: antoni-bridge, or this panel with `antoni-bridge qupath install`')
        }
        return [type: header.type, content: content, msgId: header.msg_id, parentId: header.parent_id]
    }

    /** UTF-8 JSON of maps, lists, strings, numbers, booleans and null; NaN and Infinity are refused. */
    static byte[] bytes(Object value) {
        GSON.toJson(plain(value)).getBytes(StandardCharsets.UTF_8)
    }

    static String toJson(Object value) {
        GSON.toJson(plain(value))
    }

    /** A JSON object as a Map (numbers come back as Double), or a Problem. */
    static Map fromJson(String text) {
        try {
            Object value = GSON.fromJson(text, Object)
            if (value instanceof Map) {
                return (Map) value
            }
        } catch (JsonParseException exc) {
            throw new Problem('invalid-json', "A message is not valid JSON (${exc.message}).", 'see the daemon\'s log')
        }
        throw new Problem('invalid-json', 'A message is not a JSON object.', 'see the daemon\'s log')
    }

    /** Groovy strings become Java strings (Gson would write a GString's fields); non-finite numbers are refused. */
    private static Object plain(Object value) {
        if (value instanceof CharSequence) {
            return value.toString()
        }
        if (value instanceof Map) {
            Map copy = new LinkedHashMap()
            value.each { k, v -> copy.put(k.toString(), plain(v)) }
            return copy
        }
        if (value instanceof Collection || value instanceof Object[]) {
            return value.collect { plain(it) }
        }
        if (value instanceof Number && !Double.isFinite(((Number) value).doubleValue())) {
            throw new Problem('invalid-json', "The value ${value} cannot be sent as JSON.", 'replace NaN and Infinity')
        }
        if (value == null || value instanceof Number || value instanceof Boolean) {
            return value
        }
        throw new Problem('invalid-json', "A ${value.getClass().simpleName} cannot be sent as JSON.",
                'send maps, lists, text and numbers')
    }

    private byte[] sign(byte[] header, byte[] content) {
        Mac mac = Mac.getInstance('HmacSHA256')
        mac.init(key)
        mac.update(header)
        mac.update(content)
        return mac.doFinal().encodeHex().toString().getBytes(StandardCharsets.US_ASCII)
    }
}
