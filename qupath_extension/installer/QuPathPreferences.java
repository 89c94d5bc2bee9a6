import java.util.prefs.Preferences;

/**
 * Reads and writes QuPath's preferences (node io.github.qupath/0.6 or /0.7) through Java's own Preferences
 * API, which keeps them where QuPath looks on every system: a file on Linux, a plist on macOS, the registry on
 * Windows. Keys used: "userPath" (QuPath's user directory, PathPrefs.java:762 in QuPath 0.6.0) and
 * "startupScriptPath" (PathPrefs.java:89).
 * Usage: java QuPathPreferences.java get KEY NODE... (one line per node, empty when unset)
 *        java QuPathPreferences.java set|clear KEY NODE [VALUE]
 */
public class QuPathPreferences {
    public static void main(String[] args) throws Exception {
        String action = args[0];
        String key = args[1];
        if (action.equals("get")) {
            for (int i = 2; i < args.length; i++) { // reading never creates a node
                boolean exists = Preferences.userRoot().nodeExists(args[i]);
                System.out.println(exists ? Preferences.userRoot().node(args[i]).get(key, "") : "");
            }
            return;
        }
        Preferences node = Preferences.userRoot().node(args[2]);
        if (action.equals("set")) {
            node.put(key, args[3]);
        } else if (action.equals("clear")) {
            node.remove(key);
        } else {
            throw new IllegalArgumentException("get, set or clear, not " + action);
        }
        node.flush();
    }
}
