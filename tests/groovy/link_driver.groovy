// Drives the Groovy client core from a test: one JSON command a line on stdin, every report of the link
// as one JSON line on stdout. Commands: {"op": "connect", "connection_file": F, "address": A?},
// {"op": "ask", "content": {...}}, {"op": "cancel"}, {"op": "close"}.
import antonibridge.DaemonLink
import antonibridge.Protocol

import java.util.concurrent.LinkedBlockingQueue

// Reports are printed by a thread of their own: the link's thread must never wait on a full pipe (the panel
// hands them to the JavaFX thread in the same way).
LinkedBlockingQueue<String> lines = new LinkedBlockingQueue<String>()
Thread printer = new Thread({
    while (true) {
        System.out.println(lines.take())
        System.out.flush()
    }
} as Runnable)
printer.daemon = true
printer.start()
Closure printReport = { String kind, Map data -> lines.put(Protocol.toJson([kind: kind, data: data])) }
DaemonLink link = null
System.in.newReader('UTF-8').eachLine { String line ->
    Map command = Protocol.fromJson(line)
    switch (command.op) {
        case 'connect':
            link?.close()
            printReport('connecting', [:]) // what follows is the new link's
            File connection = new File(command.connection_file as String)
            link = new DaemonLink(connection, command.address as String, printReport).start()
            break
        case 'ask':
            link.ask(command.content as Map)
            break
        case 'cancel':
            link.cancel()
            break
        case 'close':
            link?.close()
            link = null
            int threads = Thread.getAllStackTraces().keySet().count { it.name == 'antoni-bridge-link' }
            printReport('closed', [threads: threads])
            break
    }
}
link?.close()
while (!lines.isEmpty()) {
    Thread.sleep(10)
}
