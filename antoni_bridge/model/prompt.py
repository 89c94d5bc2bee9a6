"""Conversations to token ids, exactly as the published ANTONI-Alpha code renders them.

1. The first user turn becomes [image, text]; the tokenizer's Gemma 3 chat template renders the image
   item as `<start_of_image>`, which is replaced by the full image sequence
   "\\n\\n<start_of_image>" + N x "<image_soft_token>" + "<end_of_image>\\n\\n".
2. The text is tokenized with special tokens on. The template already starts with `<bos>`, so the
   sequence starts with two BOS tokens. That is what the released model was trained and evaluated on,
   so it is reproduced on purpose.
Conversations are OpenAI-style lists of {"role": "user"|"assistant", "content": str}.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch

from antoni_bridge.errors import BridgeError

IMAGE_TOKEN = "<image_soft_token>"
BOI_TOKEN = "<start_of_image>"
EOI_TOKEN = "<end_of_image>"
END_OF_TURN = "<end_of_turn>"

Conversation = list[dict[str, Any]]


@dataclass(frozen=True)
class SpecialIds:
    bos: int
    eos: int
    pad: int
    image: int
    end_of_turn: int

    @classmethod
    def of(cls, tokenizer: Any) -> SpecialIds:
        ids = tokenizer.convert_tokens_to_ids([IMAGE_TOKEN, END_OF_TURN])
        if tokenizer.unk_token_id is not None and tokenizer.unk_token_id in ids:
            raise BridgeError("The tokenizer lacks Gemma 3's image and turn tokens.", "use MedGemma's tokenizer")
        return cls(tokenizer.bos_token_id, tokenizer.eos_token_id, tokenizer.pad_token_id, ids[0], ids[1])

    @property
    def stops(self) -> tuple[int, int]:
        return (self.eos, self.end_of_turn)


def check_conversation(conversation: Conversation) -> None:
    """A non-empty conversation of text turns, starting with the user and alternating; questions not blank."""
    if not conversation:
        raise BridgeError("The conversation is empty.", "ask a question")
    for index, turn in enumerate(conversation):
        expected = "user" if index % 2 == 0 else "assistant"
        if not isinstance(turn, dict) or turn.get("role") != expected:
            got = turn.get("role") if isinstance(turn, dict) else type(turn).__name__
            raise BridgeError(
                f"Turn {index + 1} of the conversation is {got!r}; turns must alternate user, assistant, user, ...",
                "start with a user turn and alternate",
            )
        content = turn.get("content")
        if not isinstance(content, str) or (expected == "user" and not content.strip()):
            raise BridgeError(f"Turn {index + 1} of the conversation has no text.", "give every question some text")


def check_asks(conversation: Conversation) -> None:
    """A conversation that asks for an answer: it ends with a question."""
    check_conversation(conversation)
    if conversation[-1]["role"] != "user":
        raise BridgeError("The conversation ends with an answer; there is nothing to reply to.", "add a question")


def render(
    tokenizer: Any, conversation: Conversation, image_tokens: int, add_generation_prompt: bool, image: bool = True
) -> str:
    """The prompt text: chat template with the image block in the first user turn (none without `image`: the
    language model's prior, for image-reliance controls)."""
    check_conversation(conversation)
    messages = [
        {
            "role": turn["role"],
            "content": [{"type": "image"}, {"type": "text", "text": turn["content"]}]
            if index == 0 and image
            else [{"type": "text", "text": turn["content"]}],
        }
        for index, turn in enumerate(conversation)
    ]
    try:
        text = tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=add_generation_prompt)
    except Exception as exc:  # jinja and the tokenizer raise several types for broken templates
        raise BridgeError(
            f"The tokenizer's chat template failed ({exc}).", "use MedGemma's own tokenizer files"
        ) from exc
    image_block = f"\n\n{BOI_TOKEN}{IMAGE_TOKEN * image_tokens}{EOI_TOKEN}\n\n"
    return text.replace(BOI_TOKEN, image_block, 1)


def encode(
    tokenizer: Any,
    conversation: Conversation,
    image_tokens: int,
    add_generation_prompt: bool = True,
    image: bool = True,
) -> torch.Tensor:
    """Token ids (1-D) of the rendered conversation, with the published double BOS."""
    text = render(tokenizer, conversation, image_tokens, add_generation_prompt, image)
    return torch.tensor(tokenizer(text, add_special_tokens=True)["input_ids"], dtype=torch.long)
