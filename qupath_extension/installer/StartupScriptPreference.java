import java.util.prefs.Preferences;

/**
 * Reads, sets or clears QuPath's startup script preference ("startupScriptPath" in the preference node of a
 * QuPath version, e.g. io.github.qupath/0.6) through Java's own Preferences API, which stores it where QuPath
 * looks on every system (a file on Linux, a plist on macOS, the registry on Windows).
 * Usage: java StartupScriptPreference.java get|set|clear NODE [PATH]
 */
public class StartupScriptPreference {
    private static final String KEY = "startupScriptPath";

    public static void main(String[] args) throws Exception {
        Preferences node = Preferences.userRoot().node(args[1]);
        if (args[0].equals("get")) {
            System.out.println(node.get(KEY, ""));
        } else if (args[0].equals("set")) {
            node.put(KEY, args[2]);
        } else if (args[0].equals("clear")) {
            node.remove(KEY);
        } else {
            throw new IllegalArgumentException("get, set or clear, not " + args[0]);
        }
        node.flush();
    }
}
