"""Evaluation as published: per case three questions (organ, neoplasm yes/no, diagnosis among the
case's differential options), greedy answers, and the same run with the adapter switched off as the
baseline row (the projector stays: what the LoRA tuning adds is what is measured).

Scores: organ exact accuracy and the hierarchical score (1.0 exact, 0.75 one hop, 0.5 two hops in an
organ tree, else 0); neoplasm accuracy, precision, recall and F1 (an answer that is neither yes nor no
counts as "no"); diagnosis accuracy by generation (the answer in [[...]]) and by likelihood ranking.

Cases may also carry task questions of their own ({"questions": {name: {question, answer, options}}}, as
the demo task's labels do): each is asked, and the option its answer names is graded (`<name>_accuracy`).

Controls (`--control`) run the adapter model again without the slide: "no-image" zeroes the latents (the
image block stays in the prompt, filled from all-zero latents), "shuffled" gives each case another case's
latents. A slide question set can be answered from language priors alone; the controls show how far.
"""

from __future__ import annotations

import contextlib
import json
import re
from collections.abc import Callable, Iterator
from dataclasses import asdict, dataclass, field
from importlib import resources
from pathlib import Path
from typing import Any

from antoni_bridge.errors import BridgeError
from antoni_bridge.files import write_atomically

QUESTIONS = {
    "organ": "What organ is this tissue from? Answer in less than 4 words.",
    "neoplasm": "Is there a neoplasm present in this slide? Answer Yes or No.",
    "diagnosis": "Which diagnosis is the most likely? Options: {options}. Answer with one option in double "
    "square brackets, like [[option]].",
}
HOP_SCORES = {0: 1.0, 1: 0.75, 2: 0.5}
CONTROLS = {"no-image": "no image (latents zeroed)", "shuffled": "shuffled (another slide's latents)"}


@dataclass(frozen=True)
class TaskQuestion:
    name: str
    question: str
    answer: str
    options: tuple[str, ...]


@dataclass(frozen=True)
class LabelledCase:
    key: str
    organ: str | None = None
    neoplasm: bool | None = None
    diagnosis: str | None = None
    differential_options: tuple[str, ...] = ()
    questions: tuple[TaskQuestion, ...] = ()


def read_labels(path: Path) -> list[LabelledCase]:
    """Cases from a JSON list (or {"cases": [...]}) of {key, organ, neoplasm, diagnosis, differential_options}."""
    try:
        value = json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise BridgeError(f"No labels file at {path}.", "give a JSON list of labelled cases") from None
    except (OSError, ValueError) as exc:
        raise BridgeError(f"{path.name} is not readable JSON ({exc}).", "check its syntax") from exc
    items = value.get("cases") if isinstance(value, dict) else value
    if not isinstance(items, list) or not items:
        raise BridgeError(f"{path.name} holds no cases.", 'write [{"key": ..., "organ": ..., ...}, ...]')
    cases = []
    for number, item in enumerate(items, 1):
        if not isinstance(item, dict) or not isinstance(item.get("key"), str):
            raise BridgeError(f"Case {number} of {path.name} has no string `key`.", "every case names its HDF5 key")
        options = item.get("differential_options") or []
        diagnosis = item.get("diagnosis")
        if diagnosis is not None and options and diagnosis not in options:
            raise BridgeError(f"Case {item['key']}: the diagnosis is not among its options.", "add it to the options")
        neoplasm = item.get("neoplasm")
        if neoplasm is not None and not isinstance(neoplasm, bool):
            raise BridgeError(f"Case {item['key']}: neoplasm must be true, false or null.", "fix the labels")
        questions = _task_questions(item)
        cases.append(LabelledCase(item["key"], item.get("organ"), neoplasm, diagnosis, tuple(options), questions))
    return cases


def _task_questions(item: dict[str, Any]) -> tuple[TaskQuestion, ...]:
    asked = item.get("questions") or {}
    where = f"Case {item['key']}"
    if not isinstance(asked, dict):
        raise BridgeError(f"{where}: questions must map names to questions.", '{"stain": {"question": ...}}')
    questions = []
    for name, value in asked.items():
        if not isinstance(value, dict) or not all(isinstance(value.get(k), str) for k in ("question", "answer")):
            raise BridgeError(f"{where}: question {name!r} needs a question and an answer.", "fix the labels")
        options = tuple(value.get("options") or ())
        if value["answer"] not in options:
            raise BridgeError(f"{where}: the answer of {name!r} is not among its options.", "add it to the options")
        questions.append(TaskQuestion(name, value["question"], value["answer"], options))
    return tuple(questions)


class OrganTree:
    """Organs as a tree (child -> parent), for the hierarchical score and for finding organs in answers."""

    def __init__(self, parents: dict[str, str]) -> None:
        self.parents = {k.lower(): v.lower() for k, v in parents.items() if not k.startswith("_")}
        self.names = sorted({*self.parents, *self.parents.values()}, key=len, reverse=True)

    @classmethod
    def default(cls) -> OrganTree:
        return cls(
            json.loads(resources.files("antoni_bridge.train").joinpath("organs.json").read_text(encoding="utf-8"))
        )

    @classmethod
    def read(cls, path: Path) -> OrganTree:
        try:
            return cls(json.loads(path.read_text(encoding="utf-8")))
        except (OSError, ValueError, AttributeError) as exc:
            raise BridgeError(f"The organ tree {path} is not a JSON object of child -> parent.", str(exc)) from exc

    def find(self, answer: str) -> str | None:
        """The most specific organ named in an answer."""
        text = f" {re.sub(r'[^a-z ]+', ' ', answer.lower())} "
        return next((name for name in self.names if f" {name} " in text), None)

    def hops(self, a: str, b: str) -> int | None:
        up_a, up_b = self._ancestors(a.lower()), self._ancestors(b.lower())
        common = [node for node in up_a if node in up_b]
        return up_a.index(common[0]) + up_b.index(common[0]) if common else None

    def _ancestors(self, node: str) -> list[str]:
        chain = [node]
        while chain[-1] in self.parents and len(chain) < 64:
            chain.append(self.parents[chain[-1]])
        return chain

    def score(self, answer: str | None, truth: str) -> float:
        if answer is None:
            return 0.0
        return HOP_SCORES.get(self.hops(answer, truth), 0.0)


def binary_metrics(predicted: list[bool], truth: list[bool]) -> dict[str, float]:
    tp = sum(p and t for p, t in zip(predicted, truth, strict=True))
    fp = sum(p and not t for p, t in zip(predicted, truth, strict=True))
    fn = sum(t and not p for p, t in zip(predicted, truth, strict=True))
    correct = sum(p == t for p, t in zip(predicted, truth, strict=True))
    precision = tp / (tp + fp) if tp + fp else 0.0
    recall = tp / (tp + fn) if tp + fn else 0.0
    f1 = 2 * precision * recall / (precision + recall) if precision + recall else 0.0
    return {"accuracy": correct / len(truth), "precision": precision, "recall": recall, "f1": f1}


def parse_yes_no(answer: str) -> bool | None:
    words = re.findall(r"[a-z]+", answer.lower())
    return True if words[:1] == ["yes"] else False if words[:1] == ["no"] else None


def named_option(answer: str, options: tuple[str, ...]) -> str | None:
    """The longest option the answer names as whole words ("No" is not named by "Not")."""
    for option in sorted(options, key=len, reverse=True):
        if re.search(rf"(?<!\w){re.escape(option.lower())}(?!\w)", answer.lower()):
            return option
    return None


def parse_choice(answer: str, options: tuple[str, ...]) -> str | None:
    """The option in [[...]], else the option the answer names (the longest one named)."""
    by_name = {o.lower(): o for o in options}
    bracketed = re.findall(r"\[\[(.+?)\]\]", answer)
    if bracketed and bracketed[0].strip().lower() in by_name:
        return by_name[bracketed[0].strip().lower()]
    named = [o for o in sorted(options, key=len, reverse=True) if o.lower() in answer.lower()]
    return named[0] if named else None


@dataclass
class Predictions:
    """One model variant's answers over the cases (None where a case has no such label)."""

    variant: str
    organ: list[str | None] = field(default_factory=list)
    organ_answers: list[str] = field(default_factory=list)
    neoplasm: list[bool | None] = field(default_factory=list)
    diagnosis_generated: list[str | None] = field(default_factory=list)
    diagnosis_ranked: list[str | None] = field(default_factory=list)
    asked: dict[str, list[str | None]] = field(default_factory=dict)  # task question -> the option named


def predict(
    model: Any, cases: list[LabelledCase], latents_of: Callable[[str], Any], tree: OrganTree, max_new_tokens: int,
    on_case: Callable[[], None] = lambda: None, controls: tuple[str, ...] = (),
) -> list[Predictions]:  # fmt: skip
    """Answers with the adapter and without it (the baseline), and under each control, case by case."""
    import torch

    from antoni_bridge.model.generation import GenerationOptions

    options = GenerationOptions(max_new_tokens=max_new_tokens, greedy=True)
    runs = [Predictions("ANTONI-Alpha"), Predictions("without adapter (baseline)")]
    runs += [Predictions(CONTROLS[name]) for name in controls]
    other = shuffled_keys([case.key for case in cases])
    for case in cases:
        latents = latents_of(case.key)
        for run, adapter in zip(runs[:2], (True, False), strict=True):
            with _adapter(model, adapter):
                _answer_case(model, case, latents, run, tree, options)
        for run, name in zip(runs[2:], controls, strict=True):
            control = torch.zeros_like(latents) if name == "no-image" else latents_of(other[case.key])
            with _adapter(model, True):
                _answer_case(model, case, control, run, tree, options)
        on_case()
    return runs


def shuffled_keys(keys: list[str], seed: int = 0) -> dict[str, str]:
    """Each key -> another key (a seeded cycle through all of them; a lone key keeps its own)."""
    import random

    order = sorted(keys)
    random.Random(seed).shuffle(order)
    return {key: order[(i + 1) % len(order)] for i, key in enumerate(order)}


def _answer_case(model: Any, case: LabelledCase, latents: Any, run: Predictions, tree: OrganTree, options: Any) -> None:
    def ask(question: str) -> str:
        return model.answer(latents, [{"role": "user", "content": question}], options).text

    answer = ask(QUESTIONS["organ"]) if case.organ else ""
    run.organ_answers.append(answer)
    run.organ.append(tree.find(answer) if case.organ else None)
    run.neoplasm.append(parse_yes_no(ask(QUESTIONS["neoplasm"])) if case.neoplasm is not None else None)
    generated = ranked = None
    if case.diagnosis and case.differential_options:
        question = QUESTIONS["diagnosis"].format(options="; ".join(case.differential_options))
        generated = parse_choice(ask(question), case.differential_options)
        ranked = model.score_choices(latents, question, list(case.differential_options)).best
    run.diagnosis_generated.append(generated)
    run.diagnosis_ranked.append(ranked)
    for asked in case.questions:
        run.asked.setdefault(asked.name, []).append(named_option(ask(asked.question), asked.options))


@contextlib.contextmanager
def _adapter(model: Any, on: bool) -> Iterator[None]:
    model.prefixes.clear()  # a KV cache made with the adapter must not serve the baseline, nor the reverse
    with contextlib.nullcontext() if on else model.llm.disable_adapter():
        yield
    model.prefixes.clear()


def score(cases: list[LabelledCase], run: Predictions, tree: OrganTree) -> dict[str, Any]:
    """The published metrics of one variant."""
    metrics: dict[str, Any] = {"variant": run.variant}
    organ = [(p, c.organ) for p, c in zip(run.organ, cases, strict=True) if c.organ]
    if organ:
        metrics["organ_exact"] = sum(p is not None and p == t.lower() for p, t in organ) / len(organ)
        metrics["organ_hierarchical"] = sum(tree.score(p, t) for p, t in organ) / len(organ)
    neoplasm = [(bool(p), c.neoplasm) for p, c in zip(run.neoplasm, cases, strict=True) if c.neoplasm is not None]
    if neoplasm:
        metrics |= {f"neoplasm_{k}": v for k, v in binary_metrics(*map(list, zip(*neoplasm, strict=True))).items()}
    answers = zip(run.diagnosis_generated, run.diagnosis_ranked, cases, strict=True)
    labelled = [(g, r, c.diagnosis) for g, r, c in answers if c.diagnosis and c.differential_options]
    if labelled:
        metrics["diagnosis_generation"] = sum(g == t for g, _, t in labelled) / len(labelled)
        metrics["diagnosis_likelihood"] = sum(r == t for _, r, t in labelled) / len(labelled)
    for name, right in task_answers(cases).items():
        named = iter(run.asked.get(name, []))
        graded = [next(named) == answer for answer in right if answer is not None]
        metrics[f"{name}_accuracy"] = sum(graded) / len(graded)
    metrics["cases"] = len(cases)
    return metrics


def task_answers(cases: list[LabelledCase]) -> dict[str, list[str | None]]:
    """Per task question, each case's right answer (None where the case does not ask it)."""
    names = dict.fromkeys(q.name for case in cases for q in case.questions)
    by_case = [{q.name: q.answer for q in case.questions} for case in cases]
    return {name: [asked.get(name) for asked in by_case] for name in names}


def write_report(out: Path, cases: list[LabelledCase], runs: list[Predictions], rows: list[dict[str, Any]]) -> None:
    """report.md, report.json and the adapter run's confusion matrices (confusion-{neoplasm,organ,diagnosis}.png)."""
    from antoni_bridge.train.figures import write_confusion

    out.mkdir(parents=True, exist_ok=True)
    columns = [k for k in rows[0] if k not in ("variant", "cases")]
    lines = ["# Evaluation", "", f"{len(cases)} cases, greedy answers.", ""]
    lines += ["| variant | " + " | ".join(columns) + " |", "|---|" + "---|" * len(columns)]
    lines += ["| " + row["variant"] + " | " + " | ".join(f"{row.get(c, float('nan')):.3f}" for c in columns) + " |"
              for row in rows]  # fmt: skip
    write_atomically(out / "report.md", "\n".join(lines) + "\n")
    payload = {"metrics": rows, "cases": [asdict(c) for c in cases], "predictions": [asdict(r) for r in runs]}
    write_atomically(out / "report.json", json.dumps(payload, indent=1, ensure_ascii=False))
    for name, labels, pairs in confusion_pairs(cases, runs[0]):
        if pairs:
            matrix = [[sum(p == column and t == row for p, t in pairs) for column in labels] for row in labels]
            write_confusion(out / f"confusion-{name}.png", labels, matrix, f"{name.capitalize()} (rows: truth)")


def confusion_pairs(cases: list[LabelledCase], run: Predictions) -> list[tuple[str, list[str], list[tuple[str, str]]]]:
    """(name, labels, (predicted, true) pairs) per question; a prediction outside the labels is "other"."""
    neoplasm = [("neoplasm" if p else "none", "neoplasm" if c.neoplasm else "none")
                for p, c in zip(run.neoplasm, cases, strict=True) if c.neoplasm is not None]  # fmt: skip
    organ = [(p, c.organ.lower()) for p, c in zip(run.organ, cases, strict=True) if c.organ]
    diagnosis = [(p, c.diagnosis) for p, c in zip(run.diagnosis_ranked, cases, strict=True)
                 if c.diagnosis and c.differential_options]  # fmt: skip
    result = [("neoplasm", ["neoplasm", "none"], neoplasm)]
    for name, pairs in (("organ", organ), ("diagnosis", diagnosis)):
        labels = sorted({t for _, t in pairs})
        result.append((name, [*labels, "other"], [(p if p in labels else "other", t) for p, t in pairs]))
    return result
