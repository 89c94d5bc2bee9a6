"""Running the QuPath front end's Groovy code in tests: Debian's groovy with the real JeroMQ, Gson, JTS and
OpenJFX jars (`.ci/run` installs them), under Xvfb when a test needs a display. QuPath's own classes are the
recording doubles in tests/qupath_double/.

The newest Groovy installable here is 4.0.26, QuPath 0.6's, bundled in the npm package npm-groovy-lint 18.0.0
(Debian has 2.4.21; no Groovy 5 is on PyPI, npm or Debian): .ci/run unpacks it into build/npm-groovy-lint, and
the tests use it when it is there. ANTONI_BRIDGE_GROOVY_LIB=FOLDER runs them on another Groovy's jars.
"""

from __future__ import annotations

import json
import os
import queue
import shutil
import subprocess
import threading
import time
from pathlib import Path
from typing import Any

import pytest

ROOT = Path(__file__).resolve().parents[1]
SOURCES = ROOT / "qupath_extension" / "src"
DOUBLES = ROOT / "tests" / "qupath_double"
SCRIPTS = ROOT / "tests" / "groovy"
JAVA_LIBS = Path("/usr/share/java")
JARS = {  # Debian packages: libjeromq-java, libgoogle-gson-java, libjts-java
    "jeromq": JAVA_LIBS / "jeromq.jar",
    "gson": JAVA_LIBS / "gson.jar",
    "jts": JAVA_LIBS / "jts-core.jar",
}
CONTROLSFX = JAVA_LIBS / "controlsfx.jar"  # libcontrolsfx-java: QuPath makes its menu items with ControlsFX
JAVAFX = Path("/usr/share/openjfx/lib")  # openjfx
FX_MODULES = ("base", "graphics", "controls", "swing")
NPM_GROOVY = ROOT / "build" / "npm-groovy-lint" / "package" / "lib" / "java" / "groovy" / "lib"
GROOVY_LIB = os.environ.get("ANTONI_BRIDGE_GROOVY_LIB") or (str(NPM_GROOVY) if NPM_GROOVY.is_dir() else None)
# QuPath runs scripts through Groovy's javax.script engine (groovy-jsr223). npm's Groovy 4 has no such jar, so
# Debian's (package groovy, 2.4.21) serves it: a thin adapter that compiles with the Groovy beside it.
DEBIAN_JSR223 = Path("/usr/share/groovy/lib/groovy-jsr223.jar")


def _script_engine() -> list[Path]:
    """The groovy-jsr223 jar to add to GROOVY_LIB's jars, unless it has its own."""
    return [] if not GROOVY_LIB or any(Path(GROOVY_LIB).glob("groovy-jsr223*.jar")) else [DEBIAN_JSR223]


def _missing(gui: bool) -> list[str]:
    missing = [] if GROOVY_LIB or shutil.which("groovy") else ["groovy"]
    missing += [str(path) for path in JARS.values() if not path.is_file()]
    if gui:
        missing += [str(JAVAFX / f"javafx.{m}.jar") for m in FX_MODULES if not (JAVAFX / f"javafx.{m}.jar").is_file()]
        missing += [str(CONTROLSFX)] if not CONTROLSFX.is_file() else []
        missing += [str(jar) for jar in _script_engine() if not jar.is_file()]
        missing += [name for name in ("xvfb-run",) if shutil.which(name) is None]
    return missing


def require(gui: bool = False) -> None:
    """Skip, naming what is missing, when the Debian packages are not installed here (CI installs them)."""
    missing = _missing(gui)
    if missing:
        pytest.skip(
            f"needs {', '.join(missing)} (apt-get install groovy libjeromq-java libgoogle-gson-java "
            "libjts-java openjfx libcontrolsfx-java xvfb; .ci/run does)"
        )


def java_home() -> str:
    """JAVA_HOME, else Debian's Java 17 (the newest that Debian's Groovy 2.4 runs on), else the `java` on PATH."""
    given = os.environ.get("JAVA_HOME")
    if given and (Path(given) / "bin" / "java").is_file():
        return given
    debian = sorted(Path("/usr/lib/jvm").glob("java-17-openjdk-*/bin/java"))
    java = str(debian[0]) if debian else shutil.which("java")
    assert java, "no java on PATH"
    return str(Path(java).resolve().parents[1])


def command(script: str, *args: str, gui: bool = False, sources: bool = True, jeromq: bool = True) -> list[str]:
    """groovy with the jars on its class path; `sources` adds the panel's sources from this checkout."""
    jars = [jar for name, jar in JARS.items() if jeromq or name != "jeromq"]
    classpath = [*([SOURCES] if sources else []), SCRIPTS, *jars]
    if gui:
        classpath += [DOUBLES, CONTROLSFX, *(JAVAFX / f"javafx.{m}.jar" for m in FX_MODULES), *_script_engine()]
    if GROOVY_LIB:
        java = str(Path(java_home()) / "bin" / "java")
        runtime = [
            java,
            "-cp",
            os.pathsep.join([str(Path(GROOVY_LIB) / "*"), *map(str, classpath)]),
            "groovy.ui.GroovyMain",
        ]
    else:
        runtime = ["groovy", "-cp", os.pathsep.join(map(str, classpath))]
    groovy = [*runtime, str(SCRIPTS / script), *args]
    return ["xvfb-run", "-a", "-s", "-screen 0 1280x1024x24", *groovy] if gui else groovy


def environment(prefs: Path, **extra: str) -> dict[str, str]:
    """Java's user preferences go to `prefs`, not the user's own (the panel keeps its settings there)."""
    return {
        **os.environ,
        "JAVA_HOME": java_home(),
        "JAVA_TOOL_OPTIONS": f"-Djava.util.prefs.userRoot={prefs}",
        **extra,
    }


def run(
    script: str,
    *args: str,
    prefs: Path,
    gui: bool = False,
    sources: bool = True,
    jeromq: bool = True,
    timeout: float = 300,
    **env: str,
) -> Any:
    """Run a Groovy check script to its end; its last stdout line is a JSON object of what it observed."""
    result = subprocess.run(
        command(script, *args, gui=gui, sources=sources, jeromq=jeromq),
        capture_output=True,
        text=True,
        env=environment(prefs, **env),
        timeout=timeout,
    )
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-6000:]
    return json.loads(result.stdout.strip().splitlines()[-1])


class Driver:
    """The client core in a Groovy process (tests/groovy/link_driver.groovy), spoken to in JSON lines."""

    def __init__(self, prefs: Path) -> None:
        self.process = subprocess.Popen(
            command("link_driver.groovy"),
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
            env=environment(prefs),
        )
        self.reports: queue.Queue[dict[str, Any]] = queue.Queue()
        threading.Thread(target=self._read, daemon=True).start()

    def _read(self) -> None:
        for line in self.process.stdout:
            if line.startswith("{"):
                self.reports.put(json.loads(line))

    def send(self, op: str, **fields: Any) -> None:
        self.process.stdin.write(json.dumps({"op": op, **fields}) + "\n")
        self.process.stdin.flush()

    def wait_for(self, predicate: Any, timeout: float = 30) -> dict[str, Any]:
        """The first report matching `predicate`; earlier ones are dropped."""
        deadline = time.monotonic() + timeout
        while True:
            left = deadline - time.monotonic()
            assert left > 0, "no such report from the Groovy client"
            try:
                report = self.reports.get(timeout=left)
            except queue.Empty:
                continue
            if predicate(report):
                return report

    def connect(self, connection: Path, **fields: str) -> dict[str, Any]:
        """A new link to the daemon of `connection`; its first state that is connected or has a problem."""
        self.send("connect", connection_file=str(connection), **fields)
        self.wait_for(lambda r: r["kind"] == "connecting")  # reports of the previous link come before it
        return self.state(lambda s: s["connected"] or s["problem"])

    def state(self, predicate: Any, timeout: float = 30) -> dict[str, Any]:
        return self.wait_for(lambda r: r["kind"] == "state" and predicate(r["data"]), timeout)["data"]

    def job_until_end(self, timeout: float = 60) -> list[dict[str, Any]]:
        """The job's events up to and including its terminal one."""
        events = []
        while not events or events[-1]["type"] not in ("done", "error", "cancelled", "busy"):
            events.append(self.wait_for(lambda r: r["kind"] == "job", timeout)["data"])
        return events

    def close(self) -> None:
        if self.process.poll() is None:
            self.process.stdin.close()
            try:
                self.process.wait(timeout=10)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()
