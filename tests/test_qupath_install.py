"""`antoni-bridge qupath install | uninstall` as users run them, into a QuPath user directory in a temporary
home; Java's preferences (where QuPath keeps its user directory and startup script) go to an isolated
preferences root (-Djava.util.prefs.userRoot) in a temporary folder, written through the installer's own Java
helper as QuPath writes them. The installed startup script is then run as QuPath runs it, inside the QuPath
double."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest

from antoni_bridge import qupath_install
from antoni_bridge.errors import BridgeError
from tests.conftest import run_cli
from tests.qupath_runtime import JARS, require, run


def _set_preference(key: str, version: str, value: str) -> None:
    assert qupath_install._preference_tool("set", key, f"io.github.qupath/{version}", value) is not None


@pytest.fixture
def home(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """A user's home whose QuPath 0.6 made its user directory at QuPath/v0.6 (its `userPath` preference)."""
    (tmp_path / "QuPath" / "v0.6").mkdir(parents=True)
    _isolate_home_and_java_preferences(tmp_path, monkeypatch)
    _set_preference("userPath", "0.6", str(tmp_path / "QuPath" / "v0.6"))
    return tmp_path


def _startup_script_of_qupath() -> str | None:
    return qupath_install.startup_script_preference("get", "0.6")


def _install(*args: str) -> str:
    result = run_cli("qupath", "install", *args)
    assert result.returncode == 0, result.stderr
    return result.stdout


def test_install_copies_the_panel_and_jeromq_and_registers_the_startup_script(home: Path) -> None:
    require()
    output = _install("--jeromq-jar", str(JARS["jeromq"]))
    user_dir = home / "QuPath" / "v0.6"
    startup = user_dir / "antoni-bridge" / "startup.groovy"
    assert f"QuPath 0.6 runs {startup} at startup" in output
    assert _startup_script_of_qupath() == str(startup)
    assert f"File sources = new File('{user_dir / 'antoni-bridge'}')" in startup.read_text()
    installed = {p.name for p in (user_dir / "antoni-bridge" / "antonibridge").iterdir()}
    assert installed == {p.name for p in (qupath_install.EXTENSION / "src" / "antonibridge").glob("*.groovy")}
    assert [p.name for p in (user_dir / "extensions").iterdir()] == [JARS["jeromq"].resolve().name]
    assert "restart QuPath" in output


def _run_in_qupath(home: Path, *args: str) -> dict:
    """The QuPath double started with the preferences the installer wrote; JeroMQ is not on its class path."""
    return run("startup_check.groovy", *args, prefs=home / "java-prefs", gui=True, sources=False, jeromq=False)


def test_qupath_runs_the_installed_startup_script_with_jeromq_from_its_extensions(home: Path) -> None:
    require(gui=True)
    _install("--jeromq-jar", str(JARS["jeromq"]))
    seen = _run_in_qupath(home, "startup")
    assert seen["tabs"] == [{"text": "ANTONI", "note": None}]
    assert "Extensions>ANTONI>Describe this region" in seen["commands"]
    assert "Extensions>ANTONI>Show the ANTONI panel" in seen["commands"]
    assert seen["shortcut"] == "Alt+Shortcut+Q"  # set on the ControlsFX action, as QuPath does


def test_the_installed_self_test_script_reports_from_inside_qupath(home: Path) -> None:
    require(gui=True)
    _install("--jeromq-jar", str(JARS["jeromq"]))
    seen = _run_in_qupath(home, "startup", str(home / "QuPath" / "v0.6" / "antoni-bridge" / "self-test.groovy"))
    report = seen["printed"]
    assert "ANTONI self-test: QuPath 0.6.0 (test double)" in report
    assert f"QuPath 0.6: {home / 'QuPath' / 'v0.6'}" in report and "ok   JeroMQ on the class path" in report
    assert "skip the open image: file and pixel size: No image is open." in report  # nothing open: said, not failed


def test_the_startup_script_run_from_the_script_editor_runs_on_the_javafx_thread(home: Path) -> None:
    require(gui=True)
    _install("--jeromq-jar", str(JARS["jeromq"]))
    startup = home / "QuPath" / "v0.6" / "antoni-bridge" / "startup.groovy"
    seen = _run_in_qupath(home, "editor", str(startup))
    assert seen["thread"] == "JavaFX Application Thread"  # its first line says guiscript=true
    assert seen["tabs"] == [{"text": "ANTONI", "note": None}]


def test_without_jeromq_the_startup_script_says_what_to_do(home: Path) -> None:
    require(gui=True)
    _install("--jeromq-jar", str(JARS["jeromq"]))
    for jar in (home / "QuPath" / "v0.6" / "extensions").iterdir():
        jar.unlink()
    [tab] = _run_in_qupath(home, "startup")["tabs"]
    assert (
        tab["note"].startswith("The ANTONI panel needs the JeroMQ jar")
        and "antoni-bridge qupath install" in tab["note"]
    )


def test_jeromq_comes_from_the_maven_cache_first(home: Path) -> None:
    require()
    cached = home / ".m2" / "repository" / "org" / "zeromq" / "jeromq" / "0.6.0" / "jeromq-0.6.0.jar"
    cached.parent.mkdir(parents=True)
    shutil.copy(JARS["jeromq"], cached)
    _install()
    assert [p.name for p in (home / "QuPath" / "v0.6" / "extensions").iterdir()] == ["jeromq-0.6.0.jar"]


def test_jeromq_comes_from_a_system_java_folder_otherwise(home: Path) -> None:
    require()
    _install()
    assert (home / "QuPath" / "v0.6" / "extensions" / JARS["jeromq"].resolve().name).is_file()


def test_no_jeromq_anywhere_is_one_clear_message(home: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(qupath_install, "SYSTEM_JAVA_DIRS", (home / "usr-share-java",))
    with pytest.raises(BridgeError, match="No JeroMQ jar found") as refused:
        qupath_install.jeromq_jar(None)
    assert "--jeromq-jar" in refused.value.hint and qupath_install.JEROMQ_URL in refused.value.hint
    not_a_jar = home / "jeromq.jar"
    not_a_jar.write_text("not a jar")
    result = run_cli("qupath", "install", "--jeromq-jar", str(not_a_jar))
    assert result.returncode == 2 and "is not a JeroMQ jar" in result.stderr and "Traceback" not in result.stderr


def test_a_startup_script_the_user_has_is_kept(home: Path) -> None:
    require()
    assert qupath_install.startup_script_preference("set", "0.6", "/home/me/my-startup.groovy") == ""
    output = _install("--jeromq-jar", str(JARS["jeromq"]))
    assert "already runs the startup script /home/me/my-startup.groovy; it is kept. Add this line to it:" in output
    assert _startup_script_of_qupath() == "/home/me/my-startup.groovy"


def test_uninstall_removes_what_install_added_and_nothing_else(home: Path) -> None:
    require()
    user_dir = home / "QuPath" / "v0.6"
    (user_dir / "extensions").mkdir()
    (user_dir / "extensions" / "qupath-extension-other.jar").write_bytes(b"someone else's")
    _install("--jeromq-jar", str(JARS["jeromq"]))
    result = run_cli("qupath", "uninstall")
    assert result.returncode == 0, result.stderr
    assert not (user_dir / "antoni-bridge").exists()
    assert [p.name for p in (user_dir / "extensions").iterdir()] == ["qupath-extension-other.jar"]
    assert _startup_script_of_qupath() == ""


def test_the_user_directory_is_the_one_qupaths_preferences_name(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """QuPath loads extensions only from its `userPath`, wherever the user made it: ~/QuPath/v0.x is no fallback."""
    require()
    _isolate_home_and_java_preferences(tmp_path, monkeypatch)
    (tmp_path / "QuPath" / "v0.6").mkdir(parents=True)  # a folder of the same name QuPath does not use
    for version in ("0.6", "0.7"):
        (tmp_path / f"lab-qupath-{version}").mkdir()
        _set_preference("userPath", version, str(tmp_path / f"lab-qupath-{version}"))
    output = _install("--jeromq-jar", str(JARS["jeromq"]))
    for version in ("0.6", "0.7"):
        user_dir = tmp_path / f"lab-qupath-{version}"
        assert f"QuPath {version}: user directory {user_dir}" in output
        assert f"QuPath {version} runs {user_dir / 'antoni-bridge' / 'startup.groovy'} at startup" in output
        assert (user_dir / "extensions" / JARS["jeromq"].resolve().name).is_file()
    assert not (tmp_path / "QuPath" / "v0.6" / "antoni-bridge").exists()


def test_no_qupath_user_directory_says_where_in_qupath_to_make_one(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    require()
    _isolate_home_and_java_preferences(tmp_path, monkeypatch)
    (tmp_path / "QuPath" / "v0.6").mkdir(parents=True)  # proposed by QuPath, but not chosen: no userPath
    result = run_cli("qupath", "install", "--jeromq-jar", str(JARS["jeromq"]))
    assert result.returncode == 2 and "Traceback" not in result.stderr
    assert "QuPath 0.7: no user directory set" in result.stdout
    assert "error: Neither QuPath 0.7 nor 0.6 has a user directory yet" in result.stderr
    assert "hint: in QuPath: Edit > Preferences > Extensions > QuPath user directory" in result.stderr


def _isolate_home_and_java_preferences(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """QuPath's preferences live in Java's user preferences: point them, and HOME, into the test's folder."""
    monkeypatch.setenv("HOME", str(tmp_path))
    monkeypatch.setenv("JAVA_TOOL_OPTIONS", f"-Djava.util.prefs.userRoot={tmp_path / 'java-prefs'}")
