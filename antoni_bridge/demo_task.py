"""The demo task: questions about a demo slide whose answers its pixels decide.

A demo slide (antoni_bridge.slides.demo) holds one to four tissue pieces, each stained with H&E or
with DAB immunohistochemistry. The demo weights are trained on these questions only, so they know this
synthetic task and nothing of pathology. A question about a region is answered from the pieces whose
centre lies in it.
"""

from __future__ import annotations

from dataclasses import dataclass

from antoni_bridge.slides.demo import DemoLayout

QUESTIONS = {
    "stain": "Which stain is this?",
    "dab": "Is there DAB (brown) staining?",
    "count": "How many tissue pieces are there?",
    "describe": "Describe the tissue briefly.",
}
STAIN_ANSWERS = {
    "H&E": "H&E",
    "DAB": "Immunohistochemistry (DAB)",
    "both": "Both H&E and immunohistochemistry (DAB)",
}
NUMBERS = ("No", "One", "Two", "Three", "Four")
GRADED = ("stain", "dab", "count")  # the questions with one right answer among a few options


@dataclass(frozen=True)
class SlideFacts:
    """What the task's answers are made of: how many pieces of each stain."""

    he: int
    dab: int

    @classmethod
    def of(cls, layout: DemoLayout, box: tuple[float, float, float, float] | None = None) -> SlideFacts:
        """The facts of the whole slide, or of the pieces whose centre lies in a level-0 box (x, y, w, h)."""
        pieces = [p for p in layout.pieces if box is None or p.inside(box)]
        return cls(sum(p.stain == "H&E" for p in pieces), sum(p.stain == "DAB" for p in pieces))

    @property
    def count(self) -> int:
        return self.he + self.dab

    @property
    def stain(self) -> str:
        return "both" if self.he and self.dab else "DAB" if self.dab else "H&E"


def answers(facts: SlideFacts) -> dict[str, str]:
    """The right answer to every question of the task."""
    return {
        "stain": STAIN_ANSWERS[facts.stain] + ".",
        "dab": "Yes." if facts.dab else "No.",
        "count": _pieces(facts.count) + ".",
        "describe": description(facts),
    }


def options(name: str) -> tuple[str, ...]:
    """The answers a graded question can have, as the grader finds them in an answer."""
    if name == "stain":
        return tuple(STAIN_ANSWERS.values())
    if name == "dab":
        return ("Yes", "No")
    return tuple(_pieces(n) for n in range(1, len(NUMBERS)))


def description(facts: SlideFacts) -> str:
    """E.g. "Two pieces of H&E-stained tissue; no DAB staining." """
    if facts.stain == "both":
        return (
            f"{_pieces(facts.count)} of tissue: {NUMBERS[facts.he].lower()} H&E-stained, "
            f"{NUMBERS[facts.dab].lower()} with DAB staining."
        )
    if facts.stain == "DAB":
        return f"{_pieces(facts.count)} of tissue with DAB staining (immunohistochemistry)."
    return f"{_pieces(facts.count)} of H&E-stained tissue; no DAB staining."


def _pieces(count: int) -> str:
    return f"{NUMBERS[count]} piece{'s' if count != 1 else ''}"


def conversations(facts: SlideFacts) -> dict[str, list[dict[str, str]]]:
    """Training conversations: each question alone, and all of them in one conversation."""
    right = answers(facts)
    single = {
        name: [{"role": "user", "content": question}, {"role": "assistant", "content": right[name]}]
        for name, question in QUESTIONS.items()
    }
    return single | {"all": [turn for turns in single.values() for turn in turns]}


def labels(key: str, facts: SlideFacts) -> dict[str, object]:
    """A case for `antoni-bridge eval --labels`: the graded questions with their right option."""
    right = answers(facts)
    questions = {
        name: {"question": QUESTIONS[name], "answer": right[name].rstrip("."), "options": list(options(name))}
        for name in GRADED
    }
    return {"key": key, "questions": questions}


def phrases() -> list[str]:
    """Every text of the task, for the demo tokenizer to learn its words."""
    texts = list(QUESTIONS.values())
    for he in range(len(NUMBERS)):
        for dab in range(len(NUMBERS) - he):
            if he + dab:
                texts += answers(SlideFacts(he, dab)).values()
    return texts
