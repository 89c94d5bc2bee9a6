"""What differs between Linux, macOS and Windows (antoni_bridge.platforms), and that nothing else asks.

The POSIX module runs for real here. The Windows module imports everywhere and its own logic (icacls's
arguments, reading whoami's SID, the replace retry, the seek-and-read, what counts as an absolute path)
runs here too; its Win32 calls (OpenProcess, icacls, whoami) run only in the tests marked for Windows.
"""

from __future__ import annotations

import ast
import os
import signal
import stat
import subprocess
import sys
import threading
from collections.abc import Iterator
from pathlib import Path
from types import ModuleType

import pytest

import antoni_bridge
from antoni_bridge import platforms
from antoni_bridge.errors import BridgeError
from antoni_bridge.platforms import posix, windows

PACKAGE = Path(antoni_bridge.__file__).parent
ON_WINDOWS = os.name == "nt"


def _dead_pid() -> int:
    child = subprocess.Popen([sys.executable, "-c", "pass"])
    child.wait()
    return child.pid


# ------------------------------------------------------------------------------ choosing


def test_the_module_for_this_system_is_the_one_in_use() -> None:
    assert platforms.current is (windows if ON_WINDOWS else posix)
    assert platforms.pid_alive is platforms.current.pid_alive and platforms.replace is platforms.current.replace


def test_both_modules_offer_the_same_names() -> None:
    offered = {name for name in platforms.__all__ if name != "current"}
    assert all(hasattr(posix, name) and hasattr(windows, name) for name in offered)


# ------------------------------------------------------------------------------ POSIX, for real

posix_only = pytest.mark.skipif(ON_WINDOWS, reason="POSIX calls")


@posix_only
def test_posix_pid_alive_tells_running_from_ended_and_impossible_pids() -> None:
    assert posix.pid_alive(os.getpid()) and posix.pid_alive(1)  # pid 1: another user's, still alive
    assert not posix.pid_alive(_dead_pid()) and not posix.pid_alive(0) and not posix.pid_alive(2**40)


@posix_only
def test_posix_private_files_and_folders_are_the_owners_alone(tmp_path: Path) -> None:
    file, folder = tmp_path / "key", tmp_path / "folder"
    file.write_bytes(b"secret")
    folder.mkdir()
    file.chmod(0o666)
    folder.chmod(0o777)
    posix.make_private(file)
    posix.make_private(folder)
    assert stat.S_IMODE(file.stat().st_mode) == 0o600 and stat.S_IMODE(folder.stat().st_mode) == 0o700


@posix_only
def test_posix_open_private_is_private_from_the_first_byte_whatever_the_umask(tmp_path: Path) -> None:
    path = tmp_path / "start.log"
    path.write_bytes(b"an older, longer start log")
    path.chmod(0o644)
    previous = os.umask(0)
    try:
        with posix.open_private(path) as output:  # an existing file, readable by all
            assert stat.S_IMODE(os.fstat(output.fileno()).st_mode) == 0o600
            output.write(b"new")
        assert path.read_bytes() == b"new"
        path.unlink()
        with posix.open_private(path) as output:
            assert stat.S_IMODE(os.fstat(output.fileno()).st_mode) == 0o600
    finally:
        os.umask(previous)


@posix_only
def test_posix_refuses_a_folder_other_users_can_write(tmp_path: Path) -> None:
    tmp_path.chmod(0o700)
    posix.check_private_folder(tmp_path)
    tmp_path.chmod(0o777)
    with pytest.raises(BridgeError, match="can be written by other users") as refused:
        posix.check_private_folder(tmp_path)
    assert "chmod go-w" in refused.value.hint


@posix_only
def test_posix_data_home_follows_xdg_and_ignores_a_relative_one(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("XDG_CACHE_HOME", "/srv/cache")
    assert posix.data_home() == Path("/srv/cache/antoni-bridge")
    for unusable in ("relative/cache", ""):
        monkeypatch.setenv("XDG_CACHE_HOME", unusable)
        assert posix.data_home() == Path.home() / ".cache" / "antoni-bridge"


def test_posix_absolute_paths_start_at_the_root() -> None:
    assert posix.is_absolute("/slides/a.svs") and posix.is_absolute("//host/a.svs")
    assert not any(posix.is_absolute(p) for p in ("slides/a.svs", "~/a.svs", r"C:\slides\a.svs", ""))


@posix_only
def test_posix_stops_on_sigint_and_sigterm() -> None:
    assert posix.STOP_SIGNALS == (signal.SIGINT, signal.SIGTERM) and posix.BACKGROUND_CHILD_FLAGS == 0


# ------------------------------------------------------------------------------ both, on this system's files


@pytest.fixture(params=[posix, windows], ids=["posix", "windows"])
def module(request: pytest.FixtureRequest) -> ModuleType:
    """Both modules where their file calls work here (Windows' seek-and-read and replace are plain os calls)."""
    if request.param is posix and ON_WINDOWS:
        pytest.skip("pread is POSIX only")
    return request.param


def test_read_at_reads_the_right_bytes_from_many_threads_at_once(module: ModuleType, tmp_path: Path) -> None:
    path = tmp_path / "tiles.bin"
    blocks = [bytes([i]) * (1000 + i) for i in range(64)]
    path.write_bytes(b"".join(blocks))
    offsets = [sum(map(len, blocks[:i])) for i in range(len(blocks))]
    fd = module.open_for_reading(path)
    results: dict[int, bytes] = {}

    def read(indices: range) -> None:
        for _ in range(20):
            for i in indices:
                results[i] = module.read_at(fd, len(blocks[i]), offsets[i])

    try:
        threads = [threading.Thread(target=read, args=(range(k, 64, 8),)) for k in range(8)]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join()
    finally:
        os.close(fd)
    assert [results[i] for i in range(64)] == blocks


def test_replace_puts_the_new_file_over_the_old(module: ModuleType, tmp_path: Path) -> None:
    old, new = tmp_path / "answers.csv", tmp_path / ".answers.csv.tmp"
    old.write_bytes(b"old")
    new.write_bytes(b"new")
    module.replace(new, old)
    assert old.read_bytes() == b"new" and not new.exists()
    module.sync_folder(tmp_path)


def test_text_files_are_written_as_given_on_every_system(tmp_path: Path) -> None:
    """Meaningful on Windows, whose text mode rewrites line ends (passes trivially elsewhere)."""
    from antoni_bridge.files import write_atomically

    rows = 'question,answer\r\n"Grade?","Gleason 4+3,\nµ → β"\r\n'  # a CSV row with a line break inside
    write_atomically(tmp_path / "answers.csv", rows)
    assert (tmp_path / "answers.csv").read_bytes() == rows.encode("utf-8")


# ------------------------------------------------------------------------------ Windows' own logic, anywhere


def test_windows_icacls_keeps_one_entry_for_the_user() -> None:
    sid = "S-1-5-21-1004336348-1177238915-682003330-512"
    assert windows.icacls_arguments(Path("daemon.json"), sid, folder=False) == [
        "daemon.json",
        "/inheritance:r",  # inherited entries (Users, Authenticated Users on a shared folder) removed
        "/grant:r",  # replaces, not adds to, what the SID had
        f"*{sid}:(F)",  # *: a SID, not an account name (names differ by language)
    ]
    assert windows.icacls_arguments(Path("logs"), sid, folder=True)[-1] == f"*{sid}:(OI)(CI)(F)"


def test_windows_reads_the_sid_from_whoami() -> None:
    # `whoami /user /fo csv /nh`, documented at
    # learn.microsoft.com/windows-server/administration/windows-commands/whoami
    line = '"contoso\\\\jürgen","S-1-5-21-1180699209-877415012-3182924384-1004"\r\n'
    assert windows.sid_from_whoami(line) == "S-1-5-21-1180699209-877415012-3182924384-1004"
    with pytest.raises(BridgeError, match="named no SID"):
        windows.sid_from_whoami("ERROR: Access is denied.\r\n")


def test_windows_an_unopenable_process_is_alive_only_when_access_was_denied() -> None:
    assert windows.alive_without_handle(windows.ERROR_ACCESS_DENIED)  # another user's, or protected
    assert not windows.alive_without_handle(87)  # ERROR_INVALID_PARAMETER: no such process


def test_windows_pid_alive_refuses_impossible_pids_without_asking() -> None:
    assert not windows.pid_alive(0) and not windows.pid_alive(-5) and not windows.pid_alive(2**32)


def test_windows_replace_waits_out_a_brief_lock_and_gives_up_on_a_lasting_one() -> None:
    waits: list[float] = []
    locked_for = iter([True, True, False])

    def rename() -> None:
        if next(locked_for):
            raise PermissionError(13, "The process cannot access the file because it is being used")

    windows.retrying(rename, (0.05, 0.1, 0.2), waits.append)
    assert waits == [0.05, 0.1]
    waits.clear()

    def locked() -> None:
        raise PermissionError(13, "locked")

    with pytest.raises(PermissionError):
        windows.retrying(locked, (0.05, 0.1), waits.append)
    assert waits == [0.05, 0.1]
    assert sum(windows.REPLACE_DELAYS_S) < 5  # a user waits at most seconds for a file that stays locked


def test_windows_absolute_paths_have_a_drive_and_root_or_a_share() -> None:
    absolute = [r"C:\slides\a.svs", "C:/slides/a.svs", r"\\server\share\a.svs", r"\\?\C:\very\long\a.svs"]
    relative = [r"\slides\a.svs", r"C:slides\a.svs", r"slides\a.svs", "~/a.svs", ""]
    assert all(windows.is_absolute(p) for p in absolute)
    assert not any(windows.is_absolute(p) for p in relative)


def test_windows_data_home_is_the_local_application_data(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("LOCALAPPDATA", r"C:\Users\jürgen\AppData\Local")
    assert str(windows.data_home()).replace("/", "\\") == r"C:\Users\jürgen\AppData\Local\antoni-bridge"
    monkeypatch.delenv("LOCALAPPDATA")
    assert windows.data_home() == Path.home() / "AppData" / "Local" / "antoni-bridge"


def test_windows_stops_on_ctrl_c_and_ctrl_break_and_hides_the_daemons_window() -> None:
    ctrl_c, ctrl_break = windows.STOP_SIGNALS
    assert ctrl_c == signal.SIGINT and ctrl_break == getattr(signal, "SIGBREAK", 21)  # 21 in Windows' signal.h
    assert windows.BACKGROUND_CHILD_FLAGS == 0x08000000  # CREATE_NO_WINDOW


def test_windows_output_to_a_file_is_utf8_whatever_the_code_page(tmp_path: Path) -> None:
    with (tmp_path / "answer.txt").open("w", encoding="cp1252") as redirected:
        windows.utf8_output([redirected])
        print("3 µm → tumour, Gleason 4+3 (β)", file=redirected)
    assert (tmp_path / "answer.txt").read_text(encoding="utf-8") == "3 µm → tumour, Gleason 4+3 (β)\n"


# ------------------------------------------------------------------------------ Windows, for real

windows_only = pytest.mark.skipif(not ON_WINDOWS, reason="Win32 calls")


@windows_only
def test_windows_pid_alive_asks_the_kernel() -> None:
    assert windows.pid_alive(os.getpid()) and not windows.pid_alive(_dead_pid())


@windows_only
def test_windows_private_files_list_only_their_user(tmp_path: Path) -> None:
    path = tmp_path / "daemon.json"
    path.write_bytes(b"{}")
    windows.make_private(path)
    listed = subprocess.run(["icacls", str(path)], capture_output=True, check=True).stdout.decode("utf-8", "replace")
    entries = [line for line in listed.splitlines()[:-1] if ":(" in line]  # the last line is a summary
    assert len(entries) == 1 and "(F)" in entries[0] and "(I)" not in entries[0]


# ------------------------------------------------------------------------------ nothing else asks

POSIX_OR_WINDOWS_ONLY = {
    "os": {"kill", "killpg", "chmod", "fchmod", "lchmod", "chown", "umask", "getuid", "geteuid", "getgid"}
    | {"getegid", "pread", "pwrite", "setsid", "getpgid", "setpgid", "fork", "name", "replace", "rename", "startfile"},
    "sys": {"platform", "getwindowsversion"},
    "platform": {"system"},
}
SIGNAL_CALLS = {"signal", "getsignal"}  # installing handlers is the same everywhere; which signals is not
SYSTEM_MODULES = {"fcntl", "pwd", "grp", "termios", "resource", "msvcrt", "winreg", "_winapi", "ctypes", "posix", "nt"}
PATH_METHODS = {"chmod", "lchmod"}  # mode bits: Windows keeps only read-only
POSIX_ONLY_KEYWORDS = {"preexec_fn", "start_new_session", "pass_fds"}
TEXT_IO_METHODS = {"read_text", "write_text"}
LOG_HANDLERS = {"FileHandler", "RotatingFileHandler", "TimedRotatingFileHandler"}


def system_specific(source: str) -> Iterator[tuple[int, str]]:
    """(line, what) for each call in `source` that means something else, or nothing, on another system."""
    for node in ast.walk(ast.parse(source)):
        if isinstance(node, ast.Attribute) and isinstance(node.value, ast.Name):
            owner, name = node.value.id, node.attr
            if name in POSIX_OR_WINDOWS_ONLY.get(owner, ()) or (owner == "os" and name.startswith("O_")):
                yield node.lineno, f"{owner}.{name}"
            if owner == "signal" and name not in SIGNAL_CALLS:
                yield node.lineno, f"signal.{name}"
        elif isinstance(node, ast.Import | ast.ImportFrom):
            names = [a.name for a in node.names] if isinstance(node, ast.Import) else [node.module or ""]
            yield from ((node.lineno, f"import {n}") for n in names if n.split(".")[0] in SYSTEM_MODULES)
        elif isinstance(node, ast.Call):
            yield from _call_specific(node)
        elif isinstance(node, ast.Constant) and isinstance(node.value, str) and node.value.startswith("/tmp"):
            yield node.lineno, repr(node.value)


def _call_specific(call: ast.Call) -> Iterator[tuple[int, str]]:
    keywords = {k.arg for k in call.keywords}
    func = call.func
    name = func.attr if isinstance(func, ast.Attribute) else func.id if isinstance(func, ast.Name) else ""
    if isinstance(func, ast.Attribute) and name in PATH_METHODS:
        yield call.lineno, f".{name}()"
    yield from ((call.lineno, f"{k}=") for k in keywords & POSIX_ONLY_KEYWORDS)
    if "encoding" in keywords:
        return
    if name in TEXT_IO_METHODS or name in LOG_HANDLERS:
        yield call.lineno, f"{name}() without encoding (the locale's: cp1252 on most Windows)"
    elif name == "open" and _text_mode(call, isinstance(func, ast.Name)):
        yield call.lineno, "open() in text mode without encoding (the locale's: cp1252 on most Windows)"


def _text_mode(call: ast.Call, builtin: bool) -> bool:
    """Whether an open() call opens text: its mode (the builtin's second argument, Path.open's first) is
    a literal without "b", or absent for the builtin (Path.open() without arguments is left alone:
    other objects have an open() too)."""
    modes = [k.value for k in call.keywords if k.arg == "mode"] + call.args[1 if builtin else 0 :][:1]
    if not modes:
        return builtin
    mode = modes[0]
    return isinstance(mode, ast.Constant) and isinstance(mode.value, str) and "b" not in mode.value


def test_the_check_finds_what_it_looks_for() -> None:
    source = "\n".join(
        [
            "import fcntl",
            "os.kill(pid, 0)",
            "if os.name == 'nt': pass",
            "fd = os.open(p, os.O_RDONLY)",
            "signal.signal(signal.SIGTERM, handler)",
            "path.chmod(0o600)",
            "path.read_text()",
            "open(path, 'w')",
            "path.open('a')",
            "subprocess.Popen(cmd, start_new_session=True)",
            "log = '/tmp/x'",
        ]
    )
    found = {line for line, _ in system_specific(source)}
    assert found == set(range(1, 12))
    fine = "path.read_text(encoding='utf-8')\nopen(p, 'rb')\npath.open('wb')\nImage.open(data)\nsignal.signal(s, h)"
    assert not list(system_specific(fine))


def test_only_the_platforms_package_asks_which_system_it_runs_on() -> None:
    found = [
        f"{path.relative_to(PACKAGE.parent)}:{line}: {what}"
        for path in sorted(PACKAGE.rglob("*.py"))
        if "platforms" not in path.relative_to(PACKAGE).parts
        for line, what in system_specific(path.read_text(encoding="utf-8"))
    ]
    assert not found, "use antoni_bridge.platforms (docs/platforms.md):\n" + "\n".join(found)
