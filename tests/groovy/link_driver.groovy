// Drives the Groovy client core from a test: one JSON command a line on stdin, every report of the link
// as one JSON line on stdout. Commands: {"op": "connect", "connection_file": F, "address": A?},
// {"op": "ask", "content": {...}}, {"op": "cancel"}, {"op": "close"}.
import antonibridge.DaemonLink
import antonibridge.Protocol

DaemonLink link = null
Closure printReport = { String kind, Map data ->
    synchronized (System.out) {
        System.out.println(Protocol.json([kind: kind, data: data]))
        System.out.flush()
    }
}
System.in.newReader('UTF-8').eachLine { String line ->
    Map command = Protocol.parse(line)
    switch (command.op) {
        case 'connect':
            link?.close()
            link = new DaemonLink(new File(command.connection_file as String), command.address as String, printReport).start()
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
            printReport('closed', [threads: Thread.getAllStackTraces().keySet().count { it.name == 'antoni-bridge-link' }])
            break
    }
}
link?.close()
