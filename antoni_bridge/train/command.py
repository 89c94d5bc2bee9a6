"""`antoni-bridge train`, `antoni-bridge dataset build` and `antoni-bridge eval`."""

from __future__ import annotations

import argparse
import json
from dataclasses import replace
from pathlib import Path

from tqdm import tqdm

from antoni_bridge.errors import BridgeError
from antoni_bridge.model_sources import (
    device,
    encoder_options,
    load_encoders,
    load_model,
    model_options,
    weights_folder,
)


def add_commands(commands: argparse._SubParsersAction) -> None:

    train = commands.add_parser("train", help="train ANTONI-Alpha (stage 1 projector, stage 2 LoRA) from a config")
    train.add_argument("--config", type=Path, required=True, help="YAML over antoni_bridge/train/configs/stageN.yaml")
    train.add_argument("--max-steps", type=int, help="stop after this many optimiser steps (overrides the config)")
    train.add_argument("--restart", action="store_true", help="ignore checkpoints in output_dir (default: resume)")
    train.set_defaults(run=_train)

    dataset = commands.add_parser("dataset", help="training data from your own slides and conversations")
    actions = dataset.add_subparsers(title="actions")
    build = actions.add_parser("build", help="embed slides and write the HISTAI-Instruct HDF5")
    build.add_argument("--slides", type=Path, required=True, help="folder of slides")
    build.add_argument("--conversations", type=Path, required=True, help="JSON lines, one slide each")
    build.add_argument("--out", type=Path, required=True, help="HDF5 file to write")
    encoder_options(build)
    build.set_defaults(run=_dataset_build)

    evaluate = commands.add_parser("eval", help="the published evaluation, with a no-adapter baseline row")
    evaluate.add_argument("--data", type=Path, required=True, help="HDF5 in the HISTAI-Instruct layout")
    evaluate.add_argument("--labels", type=Path, required=True, help="JSON: key, organ, neoplasm, diagnosis, options")
    model_options(evaluate)
    evaluate.add_argument("--device", default=None)
    evaluate.add_argument("--demo", action="store_true", help="evaluate the demo weights")
    evaluate.add_argument("--organ-tree", type=Path, help="JSON child -> parent (default: the shipped one)")
    evaluate.add_argument("--max-new-tokens", type=int, default=1024)
    evaluate.add_argument("--control", action="append", choices=("no-image", "shuffled"), default=[],
                          help="also run without the slide: no-image (latents zeroed) or shuffled (another "
                          "case's latents); repeatable")  # fmt: skip
    evaluate.add_argument("--out", type=Path, required=True, help="folder for report.md, report.json, PNG")
    evaluate.set_defaults(run=_eval)


def _train(args: argparse.Namespace) -> int:
    from antoni_bridge.train.config import read_config
    from antoni_bridge.train.data import InstructData
    from antoni_bridge.train.trainer import Trainer, accelerator, agreed_quant, load_model

    config = read_config(args.config, {"max_steps": args.max_steps} if args.max_steps else None)
    data = InstructData(config.train_data, config.text_attributes)
    val = InstructData(config.val_data, config.text_attributes) if config.val_data else None
    processes = accelerator()
    config = replace(config, quant=agreed_quant(config.quant, processes))
    main = processes.is_main_process
    if args.restart and main:
        _clear_checkpoints(config.output_dir)
    processes.wait_for_everyone()
    model = load_model(config, data.latent_width, processes.device)
    trainer = Trainer(config, model, data, val, processes)
    resumed = trainer.resume()
    if resumed and main:
        print(f"resuming from {resumed} (step {trainer.position.step})")
    if main:
        print(f"stage {config.stage}: {len(data)} cases, {processes.num_processes} process(es), "
              f"{trainer.total_steps} optimiser steps; log in {config.output_dir}")  # fmt: skip
    with tqdm(total=trainer.total_steps, initial=trainer.position.step, unit="step", disable=not main) as bar:

        def show(metrics: dict) -> None:
            bar.update(1)
            bar.set_postfix(loss=f"{metrics['loss']:.4f}", lr=f"{metrics['lr']:.2e}")

        final = trainer.run(show)
    if main:
        print(f"weights: {final} (load with `antoni-bridge serve --weights {final}`)")
    processes.end_training()
    return 0


def _clear_checkpoints(output_dir: Path) -> None:
    import shutil

    for checkpoint in output_dir.glob("checkpoint-*"):
        shutil.rmtree(checkpoint)
    (output_dir / "metrics.jsonl").unlink(missing_ok=True)


def _dataset_build(args: argparse.Namespace) -> int:
    from antoni_bridge import paths
    from antoni_bridge.features.cache import FeatureCache
    from antoni_bridge.train.data import write_instruct_data
    from antoni_bridge.train.dataset import build_dataset, read_entries

    if not args.slides.is_dir():
        raise BridgeError(f"--slides {args.slides} is not a folder.", "give the folder that holds the slides")
    entries = read_entries(args.slides, args.conversations)
    encoders = load_encoders(args, device(args.device))
    cache = FeatureCache(args.cache_dir or paths.feature_cache_dir())
    with tqdm(total=len(entries), unit="slide") as bar:
        cases = build_dataset(entries, encoders, cache, lambda entry: bar.update(1))
    write_instruct_data(args.out, cases)
    print(f"{len(cases)} cases written to {args.out}")
    return 0


def _eval(args: argparse.Namespace) -> int:
    import torch

    from antoni_bridge.model.antoni import check_latents
    from antoni_bridge.train.data import InstructData
    from antoni_bridge.train.evaluate import OrganTree, predict, read_labels, score, write_report

    cases = read_labels(args.labels)
    tree = OrganTree.read(args.organ_tree) if args.organ_tree else OrganTree.default()
    data = InstructData(args.data)
    missing = [case.key for case in cases if case.key not in data.h5["embeddings"]]
    if missing:
        raise BridgeError(f"{args.data.name} lacks {len(missing)} labelled case(s), e.g. {missing[0]}.", "check keys")
    model = load_model(args, weights_folder(args))

    def latents_of(key: str) -> torch.Tensor:
        return check_latents(torch.from_numpy(data.case(key).latents), model.config)

    with tqdm(total=len(cases), unit="case") as bar:
        runs = predict(model, cases, latents_of, tree, args.max_new_tokens, lambda: bar.update(1), tuple(args.control))
    rows = [score(cases, run, tree) for run in runs]
    write_report(args.out, cases, runs, rows)
    print(json.dumps(rows, indent=1))
    print(f"report: {args.out / 'report.md'}")
    return 0
