"""The QuPath glue (qupath_extension/src/antonibridge/QuPathGlue.groovy) against a recording double of QuPath
(tests/qupath_double), with the real panel, JavaFX (Debian's OpenJFX under Xvfb) and JTS; no daemon runs, so
the panel's "not running" message is part of what is checked. tests/groovy/glue_check.groovy does the steps."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

from antoni_bridge.demo_assets import DEMO_NOTE
from tests.qupath_runtime import require, run

START = "start it with `antoni-bridge serve`"


@pytest.fixture(scope="module")
def seen(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    require(gui=True)
    home = tmp_path_factory.mktemp("no-daemon")
    return run(
        "glue_check.groovy",
        prefs=home / "prefs",
        gui=True,
        ANTONI_BRIDGE_CONNECTION_FILE=str(home / "daemon.json"),
    )


def test_the_panel_is_an_undockable_tab_with_commands_and_a_shortcut(seen: dict[str, Any]) -> None:
    assert seen["tabs"] == ["ANTONI"] and seen["tabsAfterReinstall"] == ["ANTONI"]
    assert seen["commands"] == [
        "Extensions>ANTONI>Ask ANTONI about this region",
        "Extensions>ANTONI>Describe this region",
        "Extensions>ANTONI>Show the ANTONI panel",
        "Extensions>ANTONI>ANTONI self-test",
    ]
    assert seen["shortcut"] == "Alt+Shortcut+Q"  # on the ControlsFX action: the item's own is bound
    assert seen["afterShortcutCommand"] is True  # the command turns the panel to the selected annotations


def test_the_panel_offers_the_region_actions_as_buttons_and_shows_the_shortcut(seen: dict[str, Any]) -> None:
    buttons = seen["panelButtons"]
    assert buttons["buttons"] == ["Ask ANTONI about this region", "Describe this region"]
    assert buttons["askTurnsToSelection"] is True
    assert buttons["shortcuts"] == "Also: Ctrl+Alt+Q or Alt+right-click in the viewer"


def test_running_the_script_again_keeps_one_shortcut_and_one_alt_right_click_menu(seen: dict[str, Any]) -> None:
    assert seen["shortcutAfterReinstall"] == "Alt+Shortcut+Q"
    menu = ["Ask ANTONI about this region...", "Describe this region"]
    assert seen["altRightClickAfterReinstall"] == {"ourMenu": [menu], "reachedQuPath": 0}


def test_show_the_panel_brings_an_undocked_panel_back(seen: dict[str, Any]) -> None:
    assert seen["undocked"] == {"inPane": False, "iconified": False}


def test_an_answer_for_an_image_no_longer_open_is_not_saved_into_another(seen: dict[str, Any]) -> None:
    switched = seen["switched"]
    assert switched["message"].startswith('The answer is about annotation "Tumour" in a.svs, which is no longer')
    assert "stays in the panel" in switched["message"] and "copy the conversation" in switched["hint"]


def test_alt_right_click_on_every_viewer_opens_our_menu_instead_of_qupaths(seen: dict[str, Any]) -> None:
    menu = ["Ask ANTONI about this region...", "Describe this region"]
    for viewer in seen["altRightClick"]:  # the first viewer, and one opened after the panel was installed
        assert viewer == {"ourMenu": [menu], "reachedQuPath": 0}
    assert seen["plainRightClick"] == {"ourMenu": [], "reachedQuPath": 1}  # QuPath keeps its own menu
    assert seen["afterMenuAsk"] == {"selection": True, "tab": "ANTONI"}


def test_the_whole_image_is_its_file_and_pixel_size(seen: dict[str, Any]) -> None:
    assert seen["whole"] == {
        "key": "/slides/a.svs",
        "label": "the whole image a.svs",
        "slide": "/slides/a.svs",
        "region": None,
        "mpp": 0.25,
    }
    assert seen["firstSeries"] is None  # series 0 of a file is its main image: accepted
    assert seen["withFragment"] == "/slides/a.svs"  # as QuPath's GeneralTools.toPath: fragment dropped


def test_invalid_outlines_are_repaired_before_they_are_merged(seen: dict[str, Any]) -> None:
    assert seen["invalidMerged"]["type"] in ("Polygon", "MultiPolygon")


def test_the_selection_is_read_only_as_in_qupath(seen: dict[str, Any]) -> None:
    assert seen["selectionIsReadOnly"] is True


def test_a_region_is_level_0_geojson_with_holes_kept_and_overlaps_merged(seen: dict[str, Any]) -> None:
    outer = [[1000.0, 1000.0], [3000.0, 1000.0], [3000.0, 3000.0], [1000.0, 3000.0], [1000.0, 1000.0]]
    hole = [[1500.0, 1500.0], [2000.0, 1500.0], [2000.0, 2000.0], [1500.0, 2000.0], [1500.0, 1500.0]]
    assert seen["withHole"] == {"type": "Polygon", "coordinates": [outer, hole]}
    assert seen["overlapping"]["type"] == "Polygon" and len(seen["overlapping"]["coordinates"]) == 1
    assert seen["apart"]["type"] == "MultiPolygon" and len(seen["apart"]["coordinates"]) == 2


@pytest.mark.parametrize(
    ("case", "message", "hint"),
    [
        ("noImage", "No image is open.", "open a slide"),
        ("rotated", "The image is a transformed view of its file (RotatedImageServer", "without rotation"),
        ("notAFile", "The image is not a local file (https://", "local or mounted copy"),
        ("secondSeries", "The image is series 2 of a multi-series file", "main image"),
        ("nothingSelected", "No annotation is selected.", "Whole image"),
        ("onlyDetections", "The selection holds no annotation", "select an annotation"),
        ("points", 'Annotation "Mitoses" is not an area (its shape is Points).', "draw an area"),
        ("line", 'Annotation "Ruler" is not an area (its shape is Line).', "draw an area"),
        ("enormous", "The selection has 300,001 vertices; the limit is 250,000.", "Simplify shape"),
        ("enormousEllipse", "The selection has 300,001 vertices; the limit is 250,000.", "Simplify shape"),
    ],
)
def test_what_cannot_be_asked_about_is_refused_in_one_sentence_and_a_hint(
    seen: dict[str, Any], case: str, message: str, hint: str
) -> None:
    assert seen[case]["message"].startswith(message) and hint in seen[case]["hint"]


def test_answers_are_saved_with_the_annotation_after_the_users_own_description(seen: dict[str, Any]) -> None:
    saved = seen["saved"]
    description = saved["description"]
    assert description.startswith("My own note.\n\n--- ANTONI-Alpha conversation ---\n")
    assert description.count("--- ANTONI-Alpha conversation ---") == 1  # the second answer replaced the first record
    assert "You: What is this?\nANTONI: Tumour." in description and "ANTONI: Low grade." in description
    assert DEMO_NOTE in description
    metadata = saved["metadata"]
    assert metadata["ANNOTATION_DESCRIPTION"] == description  # where QuPath keeps an annotation's description
    assert saved["calls"].count("fireObjectsChangedEvent 1") == 2  # QuPath is told, so the project saves it
    assert seen["resumedTurns"] == 4  # selecting the annotation later continues its conversation
    assert "setDescription" not in seen["wholeImageSaveCalls"]
    assert seen["annotationNotice"] is None


def test_answers_use_batchs_metadata_keys_numbered_after_those_already_there(seen: dict[str, Any]) -> None:
    metadata = seen["saved"]["metadata"]
    assert metadata["ANTONI question 1"] == "Grade?" and metadata["ANTONI answer 1"] == "Low."  # batch's, kept
    assert metadata["ANTONI question 2"] == "What is this?" and metadata["ANTONI answer 2"] == "Tumour."
    assert metadata["ANTONI question 3"] == "What grade?" and metadata["ANTONI answer 3"] == "Low grade."
    turns = json.loads(metadata["ANTONI conversation"])
    assert [t["role"] for t in turns] == ["user", "assistant", "user", "assistant"]
    assert not [key for key in metadata if key.startswith("antoni.")]  # one naming, batch's


def test_each_answer_records_the_daemons_provenance_whole_with_the_front_end(seen: dict[str, Any]) -> None:
    metadata = seen["saved"]["metadata"]
    engine = json.loads(metadata["ANTONI provenance 2"])  # `done` carried the engine's provenance: kept whole
    assert engine == {
        "antoni_bridge": "0.2.0",
        "weights": "demo-weights",
        "weights_revision": "abc123",
        "weights_sha256": "f00d",
        "llm": None,
        "tile_encoder": "virchow2",
        "slide_encoder": "prism",
        "adapter": True,
        "demo": True,
        "decoding": {"greedy": True, "max_new_tokens": 1024},
        "stop_reason": "stop",
        "front_end": "qupath",
        "options_set": {},
        "time": "2025-01-01T00:00:00Z",
    }
    older = json.loads(metadata["ANTONI provenance 3"])  # an older daemon: what its hello said
    assert older == {
        "antoni_bridge": "0.1.0",
        "weights": "demo-weights",
        "llm": None,
        "adapter": True,
        "demo": True,
        "stop_reason": "length",
        "front_end": "qupath",
        "options_set": {"max_new_tokens": 24},
        "time": "2025-01-01T00:00:00Z",
    }


def test_a_whole_image_answer_without_a_project_is_kept_in_the_image_and_the_panel_says_so(
    seen: dict[str, Any],
) -> None:
    saved = seen["wholeImageSaved"]
    properties = saved["properties"]
    assert properties["ANTONI answer 1"] == "Low grade." and properties["ANTONI question 1"] == "What grade?"
    provenance = json.loads(properties["ANTONI provenance 1"])
    assert provenance["antoni_bridge"] == "0.1.0" and provenance["demo"] is True
    assert provenance["weights"] == "demo-weights" and provenance["adapter"] is True
    assert saved["changed"] is True  # QuPath asks to save the image
    assert seen["wholeImageNotice"].startswith("No project is open, so the answer is kept in the image's properties")


def test_a_whole_image_answer_goes_into_the_project_entrys_metadata_as_batch_does(seen: dict[str, Any]) -> None:
    saved = seen["projectSaved"]
    metadata = saved["metadata"]
    assert metadata["Scanner"] == "X"  # the user's own entry metadata stays
    assert metadata["ANTONI question 1"] == "What grade?" and metadata["ANTONI answer 1"] == "Low grade."
    assert json.loads(metadata["ANTONI provenance 1"])["front_end"] == "qupath"
    assert saved["written"] == {"/projects/p/project.qpproj::1": metadata}  # syncChanges wrote the project
    assert saved["calls"][-2:] == ["syncChanges", "refreshProject"]  # as QuPath's own "Add metadata"
    assert list(saved["properties"]) == ["PROJECT_ENTRY_ID"]  # not in the image's properties
    assert seen["projectNotice"] is None
    assert seen["projectResumedTurns"] == 4  # asking about the whole image again continues its conversation


def test_the_panel_sends_only_the_options_the_user_set_and_shows_the_daemons_defaults(seen: dict[str, Any]) -> None:
    assert seen["request"] == {"unset": False, "set": {"max_new_tokens": 24}}
    assert seen["answerLengthHint"] == {
        "before": "the daemon's default",
        "after": "the daemon's default (1024 tokens)",
        "text": "",  # no answer length of the panel's own
    }
    assert seen["badLength"] == {
        "message": "The answer length must be a whole number of tokens from 1 to 8192. "
        "Hint: or leave it empty for the daemon's default.",
        "question": "What is this?",  # kept: nothing was asked
    }


def test_without_a_daemon_the_panel_names_the_cause_and_the_fix(seen: dict[str, Any]) -> None:
    no_daemon = seen["noDaemon"]
    assert no_daemon["status"] == "Not connected to the daemon."
    assert no_daemon["connection"].startswith("The daemon is not running") and START in no_daemon["connection"]
    assert no_daemon["message"].startswith("The daemon is not running") and START in no_daemon["message"]
    assert no_daemon["question"] == "Describe the tissue in this region."  # the question is kept, not lost
    assert no_daemon["askEnabled"] is True


def test_every_double_says_it_is_a_test_double() -> None:
    doubles = Path(__file__).parent / "qupath_double"
    for source in doubles.rglob("*.groovy"):
        assert "TEST DOUBLE" in source.read_text(), f"{source.name} does not say it is a test double"


def test_each_answer_shows_its_reliance_and_a_flagged_one_is_marked(seen: dict[str, Any]) -> None:
    reliance = seen["reliance"]
    assert reliance["rows"] == [
        "Answer 1: Reliance on the slide: 0.81",
        "Answer 2: FLAGGED: this answer does not depend on the image (reliance on the slide 0.01)",
    ]
    assert "#b00020" in reliance["flaggedStyle"]  # in red, as the panel's problems
    assert "ANTONI: Yes.\n" in reliance["transcript"] and "  Reliance on the slide: 0.81\n" in reliance["transcript"]
    saved = {key: json.loads(value) for key, value in reliance["metadata"].items()}
    assert saved["ANTONI reliance 1"]["score"] == 0.81 and saved["ANTONI reliance 2"]["flagged"] is True


def test_show_evidence_sends_explain_for_that_answer_about_the_same_region(seen: dict[str, Any]) -> None:
    request = seen["explainRequest"]
    assert request["type"] == "explain"
    content = request["content"]
    assert content["slide"] == "/slides/heads.svs" and content["slide_mpp"] == 0.5
    assert content["region"]["type"] == "Polygon"  # the annotation the question was about
    assert content["conversation"] == [{"role": "user", "content": "Is there DAB (brown) staining?"}]
    assert content["answer"] == "Yes." and "method" not in content  # occlusion, the daemon's default
    assert seen["whileExplaining"] == {"askDisabled": True, "evidenceDisabled": True, "cancelEnabled": True}
    assert seen["explainProgress"] == "Leaving out each group: 16 of 64 passes · 8.0 passes/s"


def test_the_evidence_map_becomes_coloured_tile_objects_of_their_own_class(seen: dict[str, Any]) -> None:
    evidence = seen["evidence"]
    assert evidence["count"] == 16 and evidence["calls"].count("addObjects 16") == 1  # one hierarchy event
    strongest = evidence["strongest"]
    assert strongest["bounds"] == [256.0, 256.0, 512.0, 512.0] and strongest["roi"] == "Rectangle"
    assert strongest["value"] == 2.0 and strongest["tile"] is True
    assert strongest["colour"] == [189, 0, 38]  # the colour map's darkest red at the largest value
    assert evidence["weakest"]["value"] == -0.5 and evidence["weakest"]["colour"][2] > 150  # negative: blue
    assert evidence["message"].startswith('Evidence: 16 tiles in the class "ANTONI evidence"')
    assert "gap 0.340" in evidence["message"] and "occlusion map over 4 groups of 16 tiles" in evidence["message"]
    saved = json.loads(evidence["saved"]["ANTONI evidence 1"])  # beside ANTONI answer 1, the answer explained
    assert saved["values"][5] == 2.0 and saved["coords"][5] == [256, 256] and saved["tile_size"] == 256
    assert saved["faithfulness"]["gap"] == 0.34 and list(evidence["saved"]) == ["ANTONI evidence 1"]


def test_a_new_map_replaces_the_old_one_and_one_button_removes_them(seen: dict[str, Any]) -> None:
    assert seen["evidenceAgain"] == 16
    assert seen["explainCancelled"] == {"message": "Cancelled the evidence map.", "askEnabled": True}
    assert seen["removed"] == {"message": "Removed 16 evidence tiles from the image.", "left": 0, "tiles": 0}


def test_zero_shot_labels_are_sent_and_shown_as_bars_likeliest_first(seen: dict[str, Any]) -> None:
    assert seen["oneLabel"].startswith("Zero-shot labels need 2 to 64 labels, separated by commas (1 given).")
    request = seen["zeroShotRequest"]
    assert request["type"] == "zero_shot" and request["content"]["labels"] == ["tumour", "stroma", "necrosis"]
    zero_shot = seen["zeroShot"]
    assert zero_shot["rows"] == [" 70.0 % stroma", " 20.0 % tumour", " 10.0 % necrosis"]
    assert zero_shot["bars"] == [0.7, 0.2, 0.1] and "by Prism (prism), not by ANTONI" in zero_shot["message"]


def test_prisms_draft_streams_into_the_conversation_marked_and_is_never_sent_to_antoni(seen: dict[str, Any]) -> None:
    assert seen["reportRequest"]["type"] == "report"
    assert seen["reportRequest"]["content"]["slide"] == "/slides/heads.svs"
    prism = "Prism (draft report by another model, not ANTONI)"
    assert seen["reportStreaming"] == f"{prism}: Diagnosis: invasive carcinoma."
    report = seen["report"]
    assert f"{prism}: Diagnosis: invasive carcinoma.\n  (Draft by Prism (not ANTONI), " in report["transcript"]
    assert report["savedRoles"] == ["user", "assistant", "user", "assistant", "prism"]
    assert report["nextAsk"] == ["user", "assistant", "user", "assistant", "user"]


def test_similar_slides_are_listed_and_a_click_opens_the_project_image_or_the_file(seen: dict[str, Any]) -> None:
    request = seen["similarRequest"]
    assert request["type"] == "similar"
    assert request["content"]["within"] == "/projects/heads/project.qpproj" and request["content"]["top"] == 10
    assert seen["similar"]["links"] == [
        "0.930  neighbour.svs (project image)",
        "0.500  x.svs (file, a region of it)",
    ]
    assert seen["openedEntry"] == {"calls": ["openImageEntry neighbour.svs"], "same": True}
    assert seen["openedFile"] == {"calls": ["openImage /elsewhere/x.svs"], "now": "/elsewhere/x.svs"}


def test_a_zero_shot_map_draws_each_labels_probability_per_tile_and_remove_clears_it(seen: dict[str, Any]) -> None:
    request = seen["zeroShotMapRequest"]
    assert request["type"] == "zero_shot" and request["content"]["map"] is True
    assert "map" not in seen["zeroShotRequest"]["content"]  # without the box ticked, no map is asked for
    groups = [[0.2, 0.7, 0.1], [0.5, 0.4, 0.1], [0.1, 0.1, 0.8], [0.3, 0.3, 0.4]]  # per group: tumour, stroma, necrosis
    shown = seen["zeroShotMap"]
    assert shown["links"] == ["Hyperlink"] * 3  # each label draws its map on a click
    assert 'Map of "stroma": 16 tiles in the class "Prism zero-shot"' in shown["message"]  # the likeliest, at once
    for label, drawn in (("stroma", shown), ("necrosis", seen["zeroShotMapClicked"])):
        tiles = drawn["tiles"]
        assert len(tiles) == 16  # one per tile, the earlier label's map replaced
        for i, tile in enumerate(tiles):
            x, y = i % 4 * 256, i // 4 * 256
            assert tile["bounds"] == [x, y, x + 256, y + 256] and tile["tile"] is True
            assert tile["measurements"] == {f"Prism zero-shot: {label}": groups[i // 4][1 if label == "stroma" else 2]}
    assert seen["zeroShotMapClicked"]["tiles"][8]["colour"] == [230, 47, 33]  # 0.8 on the evidence colours, scale 1
    assert 'Map of "necrosis"' in seen["zeroShotMapClicked"]["message"]
    assert seen["zeroShotMapRemoved"] == {
        "message": "Removed 16 zero-shot tiles from the image.",
        "button": "Remove maps",
        "tiles": 0,
    }
