"""Training and evaluation on the demo weights and small HDF5 files built here."""

from __future__ import annotations

import json
import socket
import subprocess
import sys
from pathlib import Path

import h5py
import numpy as np
import pytest
import torch
import torch.nn.functional as F
import yaml

from antoni_bridge.demo_assets import DemoWeights, write_demo_weights
from antoni_bridge.encoders.sources import read_state_dict
from antoni_bridge.train import loss as loss_module
from antoni_bridge.train.config import read_config
from antoni_bridge.train.data import Case, InstructData, write_instruct_data
from antoni_bridge.train.evaluate import (
    LabelledCase,
    OrganTree,
    Predictions,
    TaskQuestion,
    binary_metrics,
    confusion_pairs,
    score,
    shuffled_keys,
)
from antoni_bridge.train.loss import Batch, collate
from antoni_bridge.train.trainer import Trainer, load_model
from tests.conftest import run_cli

ORGANS = ("lung", "skin", "colon")


@pytest.fixture(scope="module")
def weights(tmp_path_factory: pytest.TempPathFactory) -> DemoWeights:
    folder = tmp_path_factory.mktemp("weights")
    write_demo_weights(folder)
    return DemoWeights.under(folder)


def _cases(count: int) -> list[Case]:
    rng = np.random.default_rng(0)
    cases = []
    for i in range(count):
        organ = ORGANS[i % 3]
        vqa = [{"role": "user", "content": "What organ?"}, {"role": "assistant", "content": organ}]
        report = [{"role": "user", "content": "Describe it."}, {"role": "assistant", "content": f"{organ} tissue"}]
        latents = rng.normal(size=(513, 64)).astype(np.float32) + i % 3
        cases.append(Case(f"case_{i}", latents, {"short_vqa": vqa, "clean_report": report}, organ))
    return cases


def _config(tmp_path: Path, weights: DemoWeights, **fields) -> Path:
    write_instruct_data(tmp_path / "train.h5", _cases(8))
    values = {
        "stage": 1,
        "train_data": "train.h5",
        "llm": str(weights.llm),
        "weights": str(weights.antoni),
        "output_dir": "out",
        "quant": "none",
        "batch_size": 4,
        "gradient_accumulation": 1,
        "epochs": 3,
        "save_every": 2,
        "learning_rate": 3e-3,
        "text_attributes": ["short_vqa"],
        **fields,
    }
    path = tmp_path / "config.yaml"
    path.write_text(yaml.safe_dump(values))
    return path


def _trainer(config_path: Path) -> Trainer:
    config = read_config(config_path)
    data = InstructData(config.train_data, config.text_attributes)
    return Trainer(config, load_model(config, data.latent_width, torch.device("cpu")), data, None)


def _losses(output_dir: Path) -> list[float]:
    return [json.loads(line)["loss"] for line in (output_dir / "metrics.jsonl").read_text().splitlines()]


def test_stage_1_lowers_the_loss_and_changes_only_the_projector(tmp_path: Path, weights: DemoWeights) -> None:
    trainer = _trainer(_config(tmp_path, weights))
    before = trainer.model.trained_state()
    before = {k: v.clone() for k, v in before.items()}
    trainer.run()
    losses = _losses(tmp_path / "out")
    assert len(losses) == 6 and losses[-1] < losses[0]
    after = trainer.model.trained_state()
    changed = {k for k in before if not torch.equal(before[k], after[k])}
    assert changed and all(k.startswith("projection_layer.") for k in changed)


@pytest.mark.parametrize("setup", [{}, {"stage": 2, "quant": "bf16"}], ids=["fp32", "stage2-bf16-base"])
def test_an_interrupted_run_resumes_on_the_same_loss_curve(tmp_path: Path, weights: DemoWeights, setup: dict) -> None:
    whole, parted = tmp_path / "whole", tmp_path / "parted"
    whole.mkdir(), parted.mkdir()
    _trainer(_config(whole, weights, **setup)).run()

    def interrupt(metrics: dict) -> None:
        if metrics["step"] == 3:
            raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        _trainer(_config(parted, weights, **setup)).run(interrupt)
    resumed = _trainer(_config(parted, weights, **setup))
    assert resumed.resume().name == "checkpoint-2" and resumed.position.step == 2
    assert {p.dtype for p in resumed.parameters} == {torch.float32}, "resuming must not round trained parts to bf16"
    resumed.run()
    assert _losses(parted / "out") == pytest.approx(_losses(whole / "out"), rel=1e-5)


def test_a_checkpoint_from_before_data_parallelism_resumes(tmp_path: Path, weights: DemoWeights) -> None:
    _trainer(_config(tmp_path, weights, max_steps=2)).run()
    path = tmp_path / "out" / "checkpoint-2" / "training_state.pt"
    state = torch.load(path, weights_only=False)
    del state["layout"]
    state["rng"] = state["rng"][0]  # one process's generators, unwrapped, as written then
    torch.save(state, path)
    resumed = _trainer(_config(tmp_path, weights))
    assert resumed.resume().name == "checkpoint-2"
    resumed.run()
    assert len(_losses(tmp_path / "out")) == 6


def test_the_trained_checkpoint_loads_in_the_daemon_and_answers(tmp_path: Path, weights: DemoWeights) -> None:
    from antoni_bridge.client import Client
    from antoni_bridge.daemon.launch import start_daemon

    final = _trainer(_config(tmp_path, weights, epochs=1)).run()
    latents = tmp_path / "latents.pt"
    torch.save(torch.randn(513, 64), latents)
    connection = tmp_path / "daemon.json"
    args = ["--weights", str(final), "--tile-encoder", str(weights.tile_encoder)]
    process = start_daemon([*args, "--slide-encoder", str(weights.slide_encoder), "--address", "tcp://127.0.0.1:*"],
                           connection)  # fmt: skip
    try:
        with Client(connection, timeout_s=30) as client:
            content = {"features": str(latents), "conversation": [{"role": "user", "content": "Organ?"}]}
            events = list(client.events("ask", {**content, "options": {"max_new_tokens": 4}}))
            client.request("shutdown")
        assert events[-1].type == "done", events[-1].content
    finally:
        process.wait(timeout=30)


def test_metrics_on_a_crafted_prediction_set_equal_hand_computed_values() -> None:
    tree = OrganTree.default()
    cases = [
        LabelledCase("a", "colon", True, "adenocarcinoma", ("adenocarcinoma", "adenoma")),
        LabelledCase("b", "lung", False, "adenoma", ("adenocarcinoma", "adenoma")),
        LabelledCase("c", "skin", True, "adenoma", ("adenocarcinoma", "adenoma")),
        LabelledCase("d", "colon", False, "adenocarcinoma", ("adenocarcinoma", "adenoma")),
    ]
    run = Predictions(
        "x",
        organ=["colon", "respiratory tract", None, "gastrointestinal tract"],  # exact, 1 hop, none, 2 hops
        neoplasm=[True, True, False, None],  # tp, fp, fn, tn (no answer counts as "no")
        diagnosis_generated=["adenocarcinoma", "adenoma", None, "adenoma"],
        diagnosis_ranked=["adenocarcinoma", "adenocarcinoma", "adenoma", "adenocarcinoma"],
    )
    metrics = score(cases, run, tree)
    assert metrics["organ_exact"] == 0.25
    assert metrics["organ_hierarchical"] == pytest.approx((1.0 + 0.75 + 0.0 + 0.5) / 4)
    assert metrics["neoplasm_accuracy"] == 0.5
    assert metrics["neoplasm_precision"] == 0.5 and metrics["neoplasm_recall"] == 0.5 and metrics["neoplasm_f1"] == 0.5
    assert metrics["diagnosis_generation"] == 0.5 and metrics["diagnosis_likelihood"] == 0.75
    organ = dict((name, pairs) for name, _, pairs in confusion_pairs(cases, run))["organ"]
    assert organ == [("colon", "colon"), ("other", "lung"), ("other", "skin"), ("other", "colon")]
    assert binary_metrics([False, False], [False, False]) == {
        "accuracy": 1.0,
        "precision": 0.0,
        "recall": 0.0,
        "f1": 0.0,
    }


def test_eval_command_writes_the_report_with_a_baseline_row(tmp_path: Path, weights: DemoWeights) -> None:
    write_instruct_data(tmp_path / "data.h5", _cases(2))
    labels = [
        {"key": "case_0", "organ": "lung", "neoplasm": False, "diagnosis": "a", "differential_options": ["a", "b"]},
        {"key": "case_1", "organ": "skin", "neoplasm": True},
    ]
    (tmp_path / "labels.json").write_text(json.dumps(labels))
    out = tmp_path / "report"
    args = ["--data", str(tmp_path / "data.h5"), "--labels", str(tmp_path / "labels.json"), "--out", str(out)]
    result = run_cli("eval", *args, "--weights", str(weights.antoni), "--max-new-tokens", "4")
    assert result.returncode == 0, result.stderr
    report = json.loads((out / "report.json").read_text())
    assert [row["variant"] for row in report["metrics"]] == ["ANTONI-Alpha", "without adapter (baseline)"]
    assert "organ_hierarchical" in (out / "report.md").read_text()
    for name in ("neoplasm", "organ", "diagnosis"):
        assert (out / f"confusion-{name}.png").stat().st_size, name


def test_eval_asks_task_questions_and_runs_the_controls(tmp_path: Path, weights: DemoWeights) -> None:
    write_instruct_data(tmp_path / "data.h5", _cases(3))
    asked = {"dab": {"question": "Is there DAB (brown) staining?", "answer": "No", "options": ["Yes", "No"]}}
    (tmp_path / "labels.json").write_text(json.dumps([{"key": f"case_{i}", "questions": asked} for i in range(3)]))
    out = tmp_path / "report"
    args = ["--data", str(tmp_path / "data.h5"), "--labels", str(tmp_path / "labels.json"), "--out", str(out)]
    controls = ["--control", "no-image", "--control", "shuffled"]
    result = run_cli("eval", *args, "--weights", str(weights.antoni), "--max-new-tokens", "4", *controls)
    assert result.returncode == 0, result.stderr
    rows = json.loads((out / "report.json").read_text())["metrics"]
    assert [row["variant"] for row in rows] == [
        "ANTONI-Alpha",
        "without adapter (baseline)",
        "no image (latents zeroed)",
        "shuffled (another slide's latents)",
    ]
    assert all(0.0 <= row["dab_accuracy"] <= 1.0 and row["cases"] == 3 for row in rows)
    assert "dab_accuracy" in (out / "report.md").read_text()


def test_task_questions_are_graded_and_shuffling_never_keeps_a_case_s_own_latents() -> None:
    question = TaskQuestion("dab", "Is there DAB (brown) staining?", "Yes", ("Yes", "No"))
    cases = [LabelledCase(k, questions=(question,)) for k in "abc"] + [LabelledCase("d")]
    none = [None] * len(cases)
    run = Predictions("x", none, [""] * 4, none, none, none, asked={"dab": ["Yes", None, "No"]})
    assert score(cases, run, OrganTree.default())["dab_accuracy"] == pytest.approx(1 / 3)
    keys = [f"case_{i}" for i in range(7)]
    other = shuffled_keys(keys)
    assert sorted(other.values()) == keys and all(other[k] != k for k in keys)
    assert shuffled_keys(keys) == other, "seeded"


def test_dataset_build_embeds_slides_into_the_training_layout(
    tmp_path: Path, demo_20x: Path, demo_odd_pyramid: Path
) -> None:
    turns = [{"role": "user", "content": "Organ?"}, {"role": "assistant", "content": "skin"}]
    lines = [
        {"slide": p.name, "organ": "skin", "conversations": {"short_vqa": turns}} for p in (demo_20x, demo_odd_pyramid)
    ]
    conversations = tmp_path / "conversations.jsonl"
    conversations.write_text("\n".join(json.dumps(line) for line in lines))
    out = tmp_path / "mine.h5"
    result = run_cli("dataset", "build", "--slides", str(demo_20x.parent), "--conversations", str(conversations),
                     "--out", str(out), "--demo")  # fmt: skip
    assert result.returncode == 0, result.stderr
    data = InstructData(out)
    assert data.keys == ["demo-20x", "demo-odd"] and data.latent_width == 64
    data.close()


def test_bad_configs_and_data_are_one_sentence(tmp_path: Path, weights: DemoWeights) -> None:
    config = _config(tmp_path, weights)
    typo = tmp_path / "typo.yaml"
    typo.write_text(config.read_text() + "learning_rat: 0.1\n")
    result = run_cli("train", "--config", str(typo))
    assert result.returncode == 2 and "Unknown config field(s): learning_rat" in result.stderr
    assert "Traceback" not in result.stderr
    not_h5 = tmp_path / "notes.h5"
    not_h5.write_text("not HDF5")
    with h5py.File(tmp_path / "empty.h5", "w"):
        pass
    for path, message in ((not_h5, "not a readable HDF5"), (tmp_path / "empty.h5", "lacks the /embeddings")):
        bad = tmp_path / f"{path.stem}.yaml"
        bad.write_text(config.read_text().replace("train.h5", path.name))
        result = run_cli("train", "--config", str(bad))
        assert result.returncode == 2 and message in result.stderr, result.stderr


def _one_batch(trainer: Trainer) -> Batch:
    return collate(trainer.model, trainer.data, torch.arange(4), 0, trainer.config.seed)


def _projector_grads(trainer: Trainer, loss: torch.Tensor) -> dict[str, torch.Tensor]:
    trainer.optimizer.zero_grad(set_to_none=True)
    loss.backward()
    return {n: p.grad.clone() for n, p in trainer.model.projection_layer.named_parameters()}


def test_the_chunked_loss_and_checkpointed_layers_give_the_full_logits_loss_and_gradients(
    tmp_path: Path, weights: DemoWeights, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(loss_module, "CHUNK_TOKENS", 3)  # several chunks, the last one short
    trainer = _trainer(_config(tmp_path, weights, projector_dropout=0, lora_dropout=0, text_attributes=None))
    trainer.model.train()
    batch = _one_batch(trainer)
    assert batch.targets > 3 * 2
    full = sum(  # the model's own forward, a case at a time: full logits
        F.cross_entropy(trainer.model(latents, ids[None])[0, :-1], labels[1:], ignore_index=-100, reduction="sum")
        for latents, ids, labels in zip(batch.latents, batch.ids, batch.labels, strict=True)
    )
    expected = _projector_grads(trainer, full)
    chunked = trainer.loss(batch.latents, batch.ids, batch.labels)
    assert trainer.model.llm.get_base_model().is_gradient_checkpointing
    assert chunked.item() == pytest.approx(full.item(), rel=1e-5)
    got = _projector_grads(trainer, chunked)
    for name, grad in expected.items():
        torch.testing.assert_close(got[name], grad, rtol=1e-4, atol=1e-6)


@pytest.mark.parametrize("quant", ["none", "4bit"])
def test_stage_2_lowers_the_loss_and_trains_lora(tmp_path: Path, weights: DemoWeights, quant: str) -> None:
    """4bit is QLoRA: NF4 base weights through bitsandbytes' CPU backend (a GPU runs the same code with
    CUDA kernels), trained parameters in float32, bf16 autocast."""
    if quant == "4bit":
        pytest.importorskip("bitsandbytes", reason="the gpu extra is not installed")
    trainer = _trainer(_config(tmp_path, weights, stage=2, quant=quant, learning_rate=1e-3))
    assert trainer.loss.autocast == (quant == "4bit")
    assert {p.dtype for p in trainer.parameters} == {torch.float32}
    names = {n for n, p in trainer.model.named_parameters() if p.requires_grad}
    assert not any(".vision_tower." in n for n in names), "LoRA of MedGemma's own image tower gets no slide gradient"
    before = {k: v.clone() for k, v in trainer.model.trained_state().items()}
    trainer.run()
    losses = _losses(tmp_path / "out")
    assert losses[-1] < losses[0]
    after = trainer.model.trained_state()
    assert any(".lora_B." in k and not torch.equal(before[k], after[k]) for k in before)
    if quant == "4bit":
        from bitsandbytes.nn import Linear4bit

        assert any(isinstance(m, Linear4bit) for m in trainer.model.llm.modules())


def _free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def test_two_processes_under_accelerate_launch_follow_the_one_process_loss_curve(
    tmp_path: Path, weights: DemoWeights
) -> None:
    """Data parallelism: 2 processes x 1 case x 2 accumulated micro-batches draw the loss curve of 1 process
    x 4 cases, because the loss is the token mean of the whole optimiser step (conversations of unequal
    length, so a mean of means would differ)."""
    same = {"projector_dropout": 0, "lora_dropout": 0, "text_attributes": None, "stage": 2, "learning_rate": 1e-3}
    one, two = tmp_path / "one", tmp_path / "two"
    one.mkdir(), two.mkdir()
    _trainer(_config(one, weights, **same)).run()
    config = _config(two, weights, **same, batch_size=1, gradient_accumulation=2)
    settings = ["--num_machines", "1", "--mixed_precision", "no", "--dynamo_backend", "no"]
    settings += ["--main_process_port", str(_free_port())]
    launch = [sys.executable, "-m", "accelerate.commands.launch", "--multi_gpu", "--num_processes", "2", *settings,
              "-m", "antoni_bridge", "train", "--config", str(config)]  # fmt: skip
    result = subprocess.run(launch, capture_output=True, text=True, timeout=600)
    assert result.returncode == 0, result.stderr[-3000:]
    assert "2 process(es)" in result.stdout and result.stdout.count("weights:") == 1
    assert _losses(two / "out") == pytest.approx(_losses(one / "out"), rel=1e-4)
    ours, theirs = (read_state_dict(d / "out" / "final", "final") for d in (one, two))
    for key, value in ours.items():
        torch.testing.assert_close(theirs[key], value, rtol=1e-3, atol=1e-5)
    state = torch.load(two / "out" / "checkpoint-6" / "training_state.pt", weights_only=False)
    assert state["layout"]["processes"] == 2 and len(state["rng"]) == 2
    alone = run_cli("train", "--config", str(config))
    assert alone.returncode == 2 and "written with processes 2, batch size 1" in alone.stderr, alone.stderr


def test_rewriting_a_checkpoint_that_fails_keeps_the_old_one(
    tmp_path: Path, weights: DemoWeights, monkeypatch: pytest.MonkeyPatch
) -> None:
    trainer = _trainer(_config(tmp_path, weights, max_steps=2))
    trainer.run()
    checkpoint = tmp_path / "out" / "checkpoint-2"
    before = (checkpoint / "model.safetensors").read_bytes()

    def broken_save(folder: Path) -> None:
        folder.mkdir(parents=True)
        (folder / "model.safetensors").write_bytes(b"half")
        raise OSError("disk full")

    monkeypatch.setattr(trainer.model, "save", broken_save)
    with pytest.raises(OSError, match="disk full"):
        trainer.save_checkpoint()
    assert (checkpoint / "model.safetensors").read_bytes() == before
