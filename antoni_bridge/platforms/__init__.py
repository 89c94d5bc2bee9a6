"""Everything that differs between Linux, macOS and Windows, behind one set of names.

The rest of the package calls these and never asks which system it runs on (tests/test_platforms.py
checks): POSIX calls such as os.kill(pid, 0), mode bits and signals other than SIGINT mean something
else, or nothing, on Windows. `current` is the module for this system; docs/platforms.md says what
differs and how each system is tested.
"""

from __future__ import annotations

import os

from antoni_bridge.platforms import posix, windows

current = windows if os.name == "nt" else posix

STOP_SIGNALS = current.STOP_SIGNALS
BACKGROUND_CHILD_FLAGS = current.BACKGROUND_CHILD_FLAGS
pid_alive = current.pid_alive
make_private = current.make_private
check_private_folder = current.check_private_folder
keep_files_private = current.keep_files_private
open_private = current.open_private
replace = current.replace
sync_folder = current.sync_folder
open_for_reading = current.open_for_reading
read_at = current.read_at
is_absolute = current.is_absolute
data_home = current.data_home
return_big_blocks = current.return_big_blocks
utf8_output = current.utf8_output

__all__ = [
    "BACKGROUND_CHILD_FLAGS",
    "STOP_SIGNALS",
    "check_private_folder",
    "current",
    "data_home",
    "is_absolute",
    "keep_files_private",
    "make_private",
    "open_for_reading",
    "open_private",
    "pid_alive",
    "read_at",
    "replace",
    "return_big_blocks",
    "sync_folder",
    "utf8_output",
]
