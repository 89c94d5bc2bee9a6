"""Demo weights for the language side: a tiny Gemma 3 and an ANTONI-Alpha checkpoint for it.

The tokenizer is a real byte-level BPE trained here on pathology phrases, carrying Gemma 3's special
tokens (`<bos>`, `<start_of_turn>`, `<image_soft_token>`, ...) and a chat template that renders
conversations the way Gemma 3's does. The model is Gemma 3's image-text-to-text architecture (text
decoder with sliding and global layers, a SigLIP tower, the multimodal projector) at width 64. The
ANTONI checkpoint holds the projector, LoRA and the embedding/head copies under the published key
names and is loaded by exactly the code that loads the published weights. Written here, its weights are
random (answers are random text); `antoni_bridge.train.demo_weights` trains them on the demo task.
"""

from __future__ import annotations

import json
import random
from pathlib import Path

import torch
from safetensors.torch import save_file

from antoni_bridge.model.config import AntoniConfig
from antoni_bridge.model.prompt import BOI_TOKEN, EOI_TOKEN, IMAGE_TOKEN

SPECIAL_TOKENS = [
    "<pad>",
    "<eos>",
    "<bos>",
    "<unk>",
    "<start_of_turn>",
    "<end_of_turn>",
    BOI_TOKEN,
    EOI_TOKEN,
    IMAGE_TOKEN,
]
CHAT_TEMPLATE = (
    "{{ bos_token }}"
    "{% for message in messages %}"
    "{% set role = 'model' if message['role'] == 'assistant' else message['role'] %}"
    "{{ '<start_of_turn>' + role + '\\n' }}"
    "{% if message['content'] is string %}{{ message['content'] | trim }}"
    "{% else %}{% for item in message['content'] %}"
    "{% if item['type'] == 'image' %}{{ '<start_of_image>' }}"
    "{% elif item['type'] == 'text' %}{{ item['text'] | trim }}{% endif %}"
    "{% endfor %}{% endif %}"
    "{{ '<end_of_turn>\\n' }}"
    "{% endfor %}"
    "{% if add_generation_prompt %}{{ '<start_of_turn>model\\n' }}{% endif %}"
)
WORDS = (
    "tissue slide biopsy carcinoma adenocarcinoma tumour tumor stroma gland glands nuclei nucleus "
    "mitoses necrosis inflammation lymphocytes epithelium mucosa colon breast lung prostate skin "
    "liver kidney invasive benign malignant grade high low moderate differentiated poorly well "
    "architecture pattern cells cell cytoplasm eosinophilic basophilic fibrosis margin lesion "
    "neoplasm present absent yes no the a of in and with is are shows this there no evidence organ "
    "diagnosis what which likely most section stain hematoxylin eosin immunohistochemistry positive "
    "negative region area view describe"
).split()
DEMO_IMAGE_SIZE = 112


def write_demo_tokenizer(folder: Path, seed: int = 0) -> object:
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, processors, trainers
    from transformers import PreTrainedTokenizerFast

    from antoni_bridge.demo_task import phrases

    rng = random.Random(seed)
    corpus = [" ".join(rng.choice(WORDS) for _ in range(rng.randint(4, 14))) + rng.choice(".?!,") for _ in range(3000)]
    corpus += phrases() * 20  # the demo task's questions and answers come out in few, whole-word tokens
    tokenizer = Tokenizer(models.BPE())
    tokenizer.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tokenizer.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=1024,
        special_tokens=SPECIAL_TOKENS,
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    tokenizer.train_from_iterator(corpus, trainer)
    bos = tokenizer.token_to_id("<bos>")
    tokenizer.post_processor = processors.TemplateProcessing(single="<bos> $A", special_tokens=[("<bos>", bos)])
    wrapped = PreTrainedTokenizerFast(
        tokenizer_object=tokenizer,
        bos_token="<bos>",
        eos_token="<eos>",
        pad_token="<pad>",
        unk_token="<unk>",
        additional_special_tokens=SPECIAL_TOKENS[4:],
    )
    wrapped.chat_template = CHAT_TEMPLATE
    wrapped.save_pretrained(folder)
    return wrapped


def write_demo_llm(folder: Path, seed: int = 0, sliding_window: int = 1024) -> Path:
    """A Gemma 3 image-text-to-text model at width 64, saved like MedGemma (config, weights, tokenizer)."""
    from transformers import Gemma3Config, Gemma3ForConditionalGeneration, Gemma3TextConfig, SiglipVisionConfig

    folder.mkdir(parents=True, exist_ok=True)
    tokenizer = write_demo_tokenizer(folder, seed)
    ids = {token: tokenizer.convert_tokens_to_ids(token) for token in SPECIAL_TOKENS}
    text = Gemma3TextConfig(
        vocab_size=len(tokenizer),
        hidden_size=64,
        intermediate_size=128,
        num_hidden_layers=2,
        num_attention_heads=2,
        num_key_value_heads=1,
        head_dim=32,
        max_position_embeddings=2048,
        sliding_window=sliding_window,
        layer_types=["sliding_attention", "full_attention"],
        pad_token_id=ids["<pad>"],
        bos_token_id=ids["<bos>"],
        eos_token_id=ids["<eos>"],
    )
    vision = SiglipVisionConfig(
        hidden_size=32,
        intermediate_size=64,
        num_hidden_layers=1,
        num_attention_heads=2,
        image_size=DEMO_IMAGE_SIZE,
        patch_size=14,
    )
    config = Gemma3Config(
        text_config=text,
        vision_config=vision,
        mm_tokens_per_image=16,
        image_token_index=ids[IMAGE_TOKEN],
        boi_token_index=ids[BOI_TOKEN],
        eoi_token_index=ids[EOI_TOKEN],
        eos_token_id=[ids["<eos>"], ids["<end_of_turn>"]],
    )
    torch.manual_seed(seed)
    model = Gemma3ForConditionalGeneration(config)
    model.save_pretrained(folder)
    preprocessing = {"image_mean": [0.5] * 3, "image_std": [0.5] * 3, "size": {"height": 112, "width": 112}}
    (folder / "preprocessor_config.json").write_text(json.dumps(preprocessing, indent=2), encoding="utf-8")
    return folder


def write_demo_antoni(folder: Path, llm_folder: Path, latent_dim: int, seed: int = 0, image_tokens: int = 256) -> Path:
    """An ANTONI-Alpha checkpoint for the demo LLM: projector, LoRA and copies, as published, random; with
    `image_tokens` image tokens in the prompt (256 as published; the trained demo takes fewer, to train fast)."""
    from antoni_bridge.model.antoni import AntoniModel
    from antoni_bridge.model.llm import load_llm

    config = AntoniConfig(
        llm_model_id=str(Path("..") / llm_folder.name) if llm_folder.parent == folder.parent else str(llm_folder),
        projector_input_dim=latent_dim,
        projector_num_output_tokens=image_tokens,
        demo=True,
    )
    torch.manual_seed(seed)
    model = AntoniModel(config, load_llm(llm_folder, torch.device("cpu"), "none"))
    blank = [i for i in range(len(model.tokenizer)) if not model.tokenizer.decode([i]).strip()]
    state = {}
    for key, value in model.trained_state().items():
        trained = value.clone()
        if ".lora_B." in key or ".modules_to_save." in key:  # trained parts differ from the base
            trained = value + 0.02 * torch.randn_like(value)
        if key.endswith("lm_head.modules_to_save.default.weight"):
            trained[blank] *= 0.1  # random heads favour whitespace; let the demo show words
        state[key] = trained.contiguous()
    folder.mkdir(parents=True, exist_ok=True)
    save_file(state, str(folder / "model.safetensors"))
    config.write(folder)
    return folder
