"""The protocol's schema in code (antoni_bridge/daemon/messages.py) against its two documents: the generated
docs/protocol.schema.json, and the field tables of docs/protocol.md, in both directions."""

from __future__ import annotations

import json
import re
import subprocess
import sys
import threading
from pathlib import Path
from typing import Any

import pytest
import zmq

from antoni_bridge.client import Client
from antoni_bridge.daemon.messages import (
    REQUESTS,
    AskRequest,
    ReplyDrift,
    check_reply,
    json_schema,
    refusal,
    schema_text,
)
from antoni_bridge.daemon.protocol import ConnectionInfo, Session

ROOT = Path(__file__).resolve().parents[1]
SCHEMA = ROOT / "docs" / "protocol.schema.json"
PROTOCOL_MD = ROOT / "docs" / "protocol.md"
REFERENCE = "## Fields of every message"  # the section of protocol.md that holds one table per schema object
ROW = re.compile(r"^\| `(?P<name>[a-z_0-9]+)` \| (?P<type>[^|]+) \| (?P<required>yes|no) \| [^|]* \|$")


def type_words(prop: dict[str, Any]) -> str:
    """A property's JSON Schema type in the words of protocol.md's tables."""
    if "$ref" in prop:
        return f"`{prop['$ref'].rsplit('/', 1)[1]}`"
    if "anyOf" in prop:
        return " or ".join(type_words(option) for option in prop["anyOf"])
    if "const" in prop:
        return f"`{json.dumps(prop['const'])}`"
    if "enum" in prop:
        return "one of " + ", ".join(f"`{value}`" for value in prop["enum"])
    if prop.get("type") == "array":
        return f"list of {type_words(prop['items'])}"
    return prop.get("type", "any")


def schema_fields() -> dict[str, dict[str, tuple[str, str]]]:
    """Every object of the schema: its fields with (type, required)."""
    found = {}
    for name, definition in json_schema()["$defs"].items():
        required = set(definition.get("required", ()))
        found[name] = {
            field: (type_words(prop), "yes" if field in required else "no")
            for field, prop in definition.get("properties", {}).items()
        }
    return found


def documented_fields() -> dict[str, dict[str, tuple[str, str]]]:
    """The tables of protocol.md's reference section: `### Name` headings, each followed by its rows."""
    section = PROTOCOL_MD.read_text(encoding="utf-8").split(REFERENCE, 1)[1].split("\n## ", 1)[0]
    found: dict[str, dict[str, tuple[str, str]]] = {}
    current = None
    for line in section.splitlines():
        if line.startswith("### "):
            current = found.setdefault(line[4:].strip().strip("`"), {})
        elif line.startswith("| `") and current is not None:
            row = ROW.match(line)
            assert row, f"a row protocol.md's field tables cannot read: {line}"
            current[row["name"]] = (row["type"].strip(), row["required"])
    return found


def test_the_checked_in_schema_is_the_generated_one() -> None:
    assert SCHEMA.read_text(encoding="utf-8") == schema_text(), (
        "run: python -m antoni_bridge.daemon.messages --write docs/protocol.schema.json"
    )


def test_the_schema_command_prints_and_writes_it(tmp_path: Path) -> None:
    written = tmp_path / "schema.json"
    run = [sys.executable, "-m", "antoni_bridge.daemon.messages"]
    printed = subprocess.run(run, capture_output=True, text=True, check=True).stdout
    subprocess.run([*run, "--write", str(written)], check=True)
    assert printed == written.read_text(encoding="utf-8") == schema_text()


def test_protocol_md_documents_every_field_of_the_schema_and_no_other() -> None:
    """Both directions: each object, field, type and requiredness of the schema has its row in the tables,
    and each row names one of the schema."""
    schema, documented = schema_fields(), documented_fields()
    assert documented.keys() == schema.keys()
    for name, fields in schema.items():
        assert documented[name] == fields, name


def test_every_request_type_and_reply_is_mapped_in_the_schema() -> None:
    schema = json_schema()
    assert set(schema["x-requests"]) == set(REQUESTS)
    assert set(schema["x-done"]) == {
        "ask",
        "score",
        "view",
        "embed",
        "forget",
        "load",
        "unload",
        "explain",
        "zero_shot",
        "report",
    }
    assert set(schema["x-events"]) == {"accepted", "busy", "progress", "token", "cancelled"}


@pytest.mark.parametrize(
    ("content", "sentence"),
    [
        ({"slide": "/a.svs"}, "The request carries a non-empty conversation (a list of {role, content} turns)."),
        ({"slide": "a.svs", "conversation": [{"role": "user", "content": "Q"}]}, "must be an absolute path"),
        (
            {"slide": "C:\\slides\\a.svs", "conversation": [{"role": "user", "content": "Q"}]},
            "(a path of another system: the daemon reads paths on its own machine).",
        ),
        ({"features": 5, "conversation": [{"role": "user", "content": "Q"}]}, "'features' must be a path string."),
    ],
)
def test_a_refused_request_is_one_sentence_naming_the_field(content: dict, sentence: str) -> None:
    said = refusal(AskRequest, content)
    assert said and sentence in said and said.endswith(".") and "Error" not in said


def test_a_reply_that_drifts_from_the_schema_is_caught() -> None:
    accepted = {"job_id": "0123456789ab", "position": 0}
    check_reply("ask", "accepted", accepted)
    for drifted in ({**accepted, "extra": 1}, {"job_id": "0123456789ab"}, {**accepted, "position": "0"}):
        with pytest.raises(ReplyDrift):
            check_reply("ask", "accepted", drifted)
    with pytest.raises(ReplyDrift, match="cannot be answered"):
        check_reply("hello", "done", {})
    check_reply("paint", "error", {"code": "unknown-type", "message": "Unknown request type 'paint'.", "hint": "x"})


def test_the_python_client_fails_on_a_reply_that_drifts_when_asked_to(tmp_path: Path) -> None:
    """A peer answering `status` with a field the schema lacks, over real sockets: the client raises (the
    tests set ANTONI_BRIDGE_CHECK_REPLIES=1, so every daemon reply in the suite is checked this way)."""
    context = zmq.Context()
    router = context.socket(zmq.ROUTER)
    router.linger = 0
    port = router.bind_to_random_port("tcp://127.0.0.1")
    info = ConnectionInfo.new(f"tcp://127.0.0.1:{port}")
    info.write(tmp_path / "daemon.json")

    def answer_with_drift() -> None:
        session = Session(info.key_bytes)
        identity, *frames = router.recv_multipart()
        request = session.parse(frames)
        drifted = {"queue": {}, "gpu": None, "loaded": [], "cache": {}, "mood": "sunny"}
        router.send_multipart([identity, *session.frames(session.message("status", drifted, request))])

    peer = threading.Thread(target=answer_with_drift)
    peer.start()
    try:
        with Client(tmp_path / "daemon.json", timeout_s=10) as client, pytest.raises(ReplyDrift, match="mood"):
            client.request("status")
    finally:
        peer.join(timeout=10)
        router.close()
        context.term()
