"""`antoni-bridge qupath install | uninstall`: the QuPath panel into QuPath's user directory.

QuPath loads jars only from `<user directory>/extensions/`, where the user directory is QuPath's preference
`userPath` (node `io.github.qupath/<version>`; unset until the user makes one under Edit > Preferences >
Extensions) and runs one startup script, the preference `startupScriptPath` of the same node. So the install
is: the panel's Groovy sources into `<user directory>/antoni-bridge/`, the JeroMQ jar into `extensions/`, and
our startup script registered. Both preferences go through Java's Preferences API (Java stores them
differently on each system). A startup script the user already has is never replaced.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import shutil
import subprocess
import zipfile
from collections.abc import Iterable
from pathlib import Path

from antoni_bridge.errors import BridgeError
from antoni_bridge.files import replacing

EXTENSION = Path(__file__).resolve().parents[1] / "qupath_extension"
PREFERENCE_TOOL = EXTENSION / "installer" / "QuPathPreferences.java"
FOLDER = "antoni-bridge"  # ours, inside the QuPath user directory
MANIFEST = "installed.json"  # what we put outside our folder, so that uninstall removes exactly that
QUPATH_VERSIONS = ("0.7", "0.6")
SYSTEM_JAVA_DIRS = (Path("/usr/share/java"), Path("/usr/local/share/java"), Path("/opt/homebrew/share/java"))
JEROMQ_URL = "https://repo1.maven.org/maven2/org/zeromq/jeromq/0.6.0/jeromq-0.6.0.jar"
MAKE_USER_DIR = (
    "in QuPath: Edit > Preferences > Extensions > QuPath user directory, create or choose one (or pass --qupath-dir)"
)


def add_commands(subparsers: argparse._SubParsersAction) -> None:
    qupath = subparsers.add_parser("qupath", help="install or remove the ANTONI panel in QuPath 0.6 / 0.7")
    actions = qupath.add_subparsers(title="actions")
    install = actions.add_parser("install", help="copy the panel and JeroMQ into QuPath; run it when QuPath starts")
    install.add_argument(
        "--qupath-dir", type=Path, help="QuPath's user directory (default: the one QuPath 0.7 and 0.6 name)"
    )
    install.add_argument("--jeromq-jar", type=Path, help="the JeroMQ jar (default: the Maven cache or system Java)")
    install.set_defaults(run=install_panel)
    uninstall = actions.add_parser("uninstall", help="remove what `install` put into QuPath")
    uninstall.add_argument("--qupath-dir", type=Path, help="QuPath's user directory (default: as for install)")
    uninstall.set_defaults(run=uninstall_panel)


# ---------------------------------------------------------------------------------------------- commands


def install_panel(args: argparse.Namespace) -> int:
    jar = jeromq_jar(args.jeromq_jar)
    for user_dir, versions in user_dirs(args.qupath_dir).items():
        _install_into(user_dir, versions, jar)
    print("restart QuPath: the ANTONI tab appears in the analysis pane (start the daemon: antoni-bridge serve)")
    return 0


def _install_into(user_dir: Path, versions: tuple[str, ...], jar: Path) -> None:
    folder = user_dir / FOLDER
    manifest = _read_manifest(folder)
    startup = _copy_sources(folder)
    installed_jar = _add_jar(jar, user_dir / "extensions", manifest.get("jar"))
    _write_atomically(folder / MANIFEST, json.dumps({"jar": installed_jar}, indent=1).encode())
    print(f"installed the panel in {folder}")
    print(f"JeroMQ: {user_dir / 'extensions' / installed_jar if installed_jar else 'already in extensions/'}")
    for line in _register(startup, versions):
        print(line)


def uninstall_panel(args: argparse.Namespace) -> int:
    found = {d: v for d, v in user_dirs(args.qupath_dir).items() if (d / FOLDER / MANIFEST).is_file()}
    if not found:
        raise BridgeError(
            "The ANTONI panel is not installed in QuPath's user directory.", "pass the --qupath-dir of the install"
        )
    for user_dir, versions in found.items():
        folder = user_dir / FOLDER
        jar = _read_manifest(folder).get("jar")
        if jar:
            (user_dir / "extensions" / jar).unlink(missing_ok=True)
        for line in _unregister(folder / "startup.groovy", versions):
            print(line)
        shutil.rmtree(folder)
        print(f"removed the panel from {user_dir}; restart QuPath")
    return 0


# ---------------------------------------------------------------------------------------------- finding things


def user_dirs(given: Path | None) -> dict[Path, tuple[str, ...]]:
    """QuPath's user directories and the QuPath versions using each: `given`, else the preference `userPath`."""
    named = qupath_preference("userPath", QUPATH_VERSIONS)
    if given is not None:
        if not given.is_dir():
            raise BridgeError(f"No QuPath user directory at {given}.", f"create it {MAKE_USER_DIR}")
        using = tuple(v for v, path in (named or {}).items() if path and Path(path).resolve() == given.resolve())
        return {given.resolve(): using or _versions(given)}
    if named is None:
        raise BridgeError(
            "No Java (11 or newer) to read QuPath's preferences, which name its user directory.",
            "install a JDK or set JAVA_HOME, or pass --qupath-dir (QuPath shows it in Edit > Preferences > Extensions)",
        )
    found: dict[Path, tuple[str, ...]] = {}
    for version, path in named.items():
        if not path:
            print(f"QuPath {version}: no user directory set")
        elif not Path(path).is_dir():
            print(f"QuPath {version}: its user directory {path} does not exist; skipped")
        else:
            print(f"QuPath {version}: user directory {path}")
            found[Path(path).resolve()] = (*found.get(Path(path).resolve(), ()), version)
    if not found:
        raise BridgeError(
            f"Neither QuPath {' nor '.join(QUPATH_VERSIONS)} has a user directory yet (it holds the extensions).",
            MAKE_USER_DIR,
        )
    return found


def jeromq_jar(given: Path | None) -> Path:
    """The jar named, else the newest in the Maven cache, else one in a system Java folder."""
    if given is not None:
        if not given.is_file():
            raise BridgeError(f"No file at {given}.", "pass the path of a JeroMQ jar, e.g. jeromq-0.6.0.jar")
        if not _holds_jeromq(given):
            raise BridgeError(f"{given} is not a JeroMQ jar (no org/zeromq/ZMQ.class in it).", f"download {JEROMQ_URL}")
        return given.resolve()
    maven = Path.home() / ".m2" / "repository" / "org" / "zeromq" / "jeromq"
    cached = sorted(maven.glob("*/jeromq-*.jar"), key=_version_order, reverse=True)
    system = [jar for folder in SYSTEM_JAVA_DIRS for jar in sorted(folder.glob("jeromq*.jar"))]
    for candidate in [*cached, *system]:
        if _holds_jeromq(candidate):
            return candidate.resolve()  # Debian's jeromq.jar is a link to the versioned file
    looked = ", ".join(str(folder) for folder in (maven, *SYSTEM_JAVA_DIRS))
    raise BridgeError(
        f"No JeroMQ jar found (looked in {looked}).",
        f"download {JEROMQ_URL} and pass --jeromq-jar PATH, or install it (Debian, Ubuntu: apt install libjeromq-java)",
    )


def _holds_jeromq(jar: Path) -> bool:
    try:
        with zipfile.ZipFile(jar) as archive:
            return "org/zeromq/ZMQ.class" in archive.namelist()
    except (OSError, zipfile.BadZipFile):
        return False


def _version_order(jar: Path) -> tuple[int, ...]:
    return tuple(int(n) for n in re.findall(r"\d+", jar.parent.name)) or (0,)


def _versions(user_dir: Path) -> tuple[str, ...]:
    """QuPath versions whose startup script to set for a directory no preference names: by its name (v0.6), or all."""
    named = re.fullmatch(r"v(\d+\.\d+)", user_dir.name)
    return (named.group(1),) if named else QUPATH_VERSIONS


# ---------------------------------------------------------------------------------------------- files


def _copy_sources(folder: Path) -> Path:
    """The Groovy sources into `folder`, and the startup script pointing at them; returns the startup script."""
    sources = sorted((EXTENSION / "src" / "antonibridge").glob("*.groovy"))
    if not sources:
        raise BridgeError(
            f"The panel's sources are missing from {EXTENSION}.", "install antoni-bridge from its source folder"
        )
    target = folder / "antonibridge"
    target.mkdir(parents=True, exist_ok=True)
    for stale in set(target.glob("*.groovy")) - {target / s.name for s in sources}:
        stale.unlink()  # from an earlier version of the panel
    for source in sources:
        _write_atomically(target / source.name, source.read_bytes())
    text = (EXTENSION / "startup.groovy").read_text(encoding="utf-8")
    line = f"File sources = new File('{_groovy_string(str(folder))}')"
    text, count = re.subn(r"^File sources = .*$", lambda _: line, text, count=1, flags=re.MULTILINE)
    assert count == 1, "startup.groovy lost its `File sources = ...` line"
    startup = folder / "startup.groovy"
    _write_atomically(startup, text.encode("utf-8"))
    _write_atomically(folder / "self-test.groovy", (EXTENSION / "self-test.groovy").read_bytes())
    return startup


def _add_jar(jar: Path, extensions: Path, ours: str | None) -> str | None:
    """Copy the jar into extensions/ unless a JeroMQ the user put there is already loaded; returns our file name."""
    extensions.mkdir(parents=True, exist_ok=True)
    theirs = [p for p in extensions.glob("jeromq*.jar") if p.name != ours]
    if theirs:
        if ours:
            (extensions / ours).unlink(missing_ok=True)
        return None  # two JeroMQ versions on one class path would clash
    name = jar.name if re.search(r"\d", jar.name) else "jeromq.jar"
    if ours and ours != name:
        (extensions / ours).unlink(missing_ok=True)
    _write_atomically(extensions / name, jar.read_bytes())
    return name


def _write_atomically(path: Path, data: bytes) -> None:
    """An interrupted install never leaves half a file."""
    with replacing(path) as tmp:
        tmp.write_bytes(data)


def _read_manifest(folder: Path) -> dict[str, str | None]:
    try:
        return json.loads((folder / MANIFEST).read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return {}


def _groovy_string(text: str) -> str:
    return text.replace("\\", "\\\\").replace("'", "\\'")


# ---------------------------------------------------------------------------------------------- QuPath's preference


def _register(startup: Path, versions: Iterable[str]) -> list[str]:
    """Make `startup` QuPath's startup script, unless the user has another one: then say how to add ours."""
    failed = [
        "could not set QuPath's startup script (no Java 11+ JDK to write its preferences); set it in QuPath:",
        f"Edit > Preferences > General > Startup script path: {startup}",
    ]
    lines = []
    for version in versions:
        current = startup_script_preference("get", version)
        if current is None:
            return failed
        if current in ("", str(startup)):
            if startup_script_preference("set", version, str(startup)) is None:
                return failed
            lines.append(f"QuPath {version} runs {startup} at startup")
        else:
            lines.append(
                f"QuPath {version} already runs the startup script {current}; it is kept. Add this line to it: "
                f"evaluate(new File('{_groovy_string(str(startup))}'))"
            )
    return lines


def _unregister(startup: Path, versions: Iterable[str]) -> list[str]:
    lines = []
    for version in versions:
        if startup_script_preference("get", version) == str(startup):
            startup_script_preference("clear", version)
            lines.append(f"QuPath {version} no longer runs {startup}")
    return lines


def startup_script_preference(action: str, version: str, value: str | None = None) -> str | None:
    """QuPath's startup script preference through Java; None when no Java can run the tool."""
    if action == "get":
        values = qupath_preference("startupScriptPath", (version,))
        return None if values is None else values[version]
    return (
        None
        if _preference_tool(action, "startupScriptPath", _node(version), *([value] if value else [])) is None
        else ""
    )


def qupath_preference(key: str, versions: Iterable[str]) -> dict[str, str] | None:
    """The preference `key` of each QuPath version ("" when unset); None when no Java can run the tool."""
    versions = tuple(versions)
    output = _preference_tool("get", key, *map(_node, versions))
    return None if output is None else dict(zip(versions, output.split("\n"), strict=False))


def _node(version: str) -> str:
    return f"io.github.qupath/{version}"


# Java writes its output in the system's code page on Windows (cp1252...), which cannot hold every user's path:
# UTF-8 on both sides (stdout.encoding from Java 19, file.encoding before).
UTF8_OUTPUT = ("-Dstdout.encoding=UTF-8", "-Dfile.encoding=UTF-8")


def _preference_tool(*args: str) -> str | None:
    java = _java()
    if java is None:
        return None
    try:
        result = subprocess.run(
            [java, *UTF8_OUTPUT, str(PREFERENCE_TOOL), *args],
            capture_output=True,
            encoding="utf-8",
            timeout=120,
        )
    except OSError:
        return None
    return result.stdout if result.returncode == 0 else None


def _java() -> str | None:
    home = os.environ.get("JAVA_HOME")
    if home and (Path(home) / "bin" / "java").is_file():
        return str(Path(home) / "bin" / "java")
    return shutil.which("java")
