"""Command line: `mtkd run CONFIG --output-dir DIR [--set key=value ...]` plus one command per stage."""

from __future__ import annotations

import argparse
import json
import logging
import os
import sys
from pathlib import Path

from mtkd.errors import MtkdError

EPILOG = """examples:
  mtkd run configs/demo.yaml --output-dir runs/demo
  mtkd run configs/glue-cpu.yaml --output-dir runs/glue --set mtl.epochs=1 --set tasks.SST-2.train_cap=2000
  mtkd mtl configs/glue-cpu.yaml --output-dir runs/mtl
  mtkd finetune configs/glue-cpu.yaml --output-dir runs/ft --init runs/mtl/model
  mtkd evaluate configs/glue-cpu.yaml --model runs/ft/SST-2/model --output-dir runs/eval
  mtkd predict --model runs/mtl/model --task SST-2 --text "a gripping film" --text "dull"
  mtkd combine runs/kd-seed42 runs/kd-seed43 --output-dir results/kd   (mean ± std over the seeds)
  mtkd tasks
"""


def _config_args(p):
    p.add_argument("config", help="experiment YAML (see configs/)")
    p.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
                   help="override a config value, e.g. mtl.lr=1e-4 (repeatable; ~key deletes)")


def build_parser() -> argparse.ArgumentParser:
    ap = argparse.ArgumentParser(prog="mtkd", description="Multi-task learning and knowledge distillation (MT-DNN, MT-DNN-KD).",
                                 epilog=EPILOG, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("-v", "--verbose", action="store_true")
    sub = ap.add_subparsers(dest="command", required=True)

    p = sub.add_parser("run", help="run every stage the config lists (cached: a rerun resumes)")
    _config_args(p)
    p.add_argument("--output-dir", required=True, type=Path)

    p = sub.add_parser("mtl", help="multi-task training (Algorithm 1) -> DIR/model")
    _config_args(p)
    p.add_argument("--output-dir", required=True, type=Path)
    p.add_argument("--seed", type=int, default=None, help="default: the config's first seed")

    p = sub.add_parser("finetune", help="fine-tune every task from a model (or the bare encoder) -> DIR/<task>/model")
    _config_args(p)
    p.add_argument("--output-dir", required=True, type=Path)
    p.add_argument("--init", type=Path, default=None, help="MTL model folder; omit for the single-task baseline")
    p.add_argument("--seed", type=int, default=None)

    p = sub.add_parser("evaluate", help="dev metrics of a model -> DIR/metrics.json, metrics.md")
    _config_args(p)
    p.add_argument("--model", required=True, type=Path, help="model folder used for every task")
    p.add_argument("--output-dir", required=True, type=Path)

    p = sub.add_parser("predict", help="predict new text (--text) or write a GLUE submission (CONFIG --output-dir)")
    p.add_argument("config", nargs="?", help="with --output-dir: predict every test split of the config's tasks")
    p.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE")
    p.add_argument("--model", required=True, type=Path)
    p.add_argument("--task", action="append", default=[], help="task head(s) to use (repeatable)")
    p.add_argument("--text", action="append", default=[], help="input text (repeatable)")
    p.add_argument("--pair", action="append", default=None, help="second text of a pair task (one per --text)")
    p.add_argument("--output-dir", type=Path, default=None)

    p = sub.add_parser("combine", help="merge experiment results of the same config run with different seeds -> DIR/results.json, .md, charts")
    p.add_argument("results", nargs="+", type=Path, help="results.json files (or the run folders holding them)")
    p.add_argument("--output-dir", required=True, type=Path)

    p = sub.add_parser("tasks", help="list the built-in GLUE task definitions")
    p = sub.add_parser("check-config", help="load and validate a config, print the resolved YAML")
    _config_args(p)
    return ap


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    logging.basicConfig(level=logging.DEBUG if args.verbose else logging.INFO,
                        format="%(asctime)s %(levelname)s %(name)s: %(message)s", datefmt="%H:%M:%S")
    for noisy in ("transformers", "accelerate", "urllib3", "filelock"):
        logging.getLogger(noisy).setLevel(logging.WARNING if not args.verbose else logging.INFO)
    if not args.verbose:  # the encoder's load report (unused pooler weights) is expected noise
        from transformers.utils import logging as hf_logging

        hf_logging.set_verbosity_error()
        hf_logging.disable_progress_bar()
    try:
        return _dispatch(args)
    except MtkdError as e:
        print(f"mtkd: error: {e}", file=sys.stderr)
        return 2


def _dispatch(args) -> int:
    import yaml

    from mtkd.config import load_config, to_dict

    if args.command == "tasks":
        from mtkd.tasks import glue_tasks

        print(yaml.safe_dump({n: s.to_dict() for n, s in glue_tasks().items()}, sort_keys=False))
        return 0
    if args.command == "predict" and args.output_dir is None:
        from mtkd.model import MTModel

        if not args.task or not args.text:
            raise SystemExit("mtkd predict: give --task and --text (or CONFIG --output-dir for a submission)")
        from mtkd.errors import ConfigError

        model = MTModel.from_pretrained(args.model)
        unknown = [t for t in args.task if t not in model.tasks]
        if unknown:
            raise ConfigError(f"--task {', '.join(unknown)}: not a task of {args.model} (it has {', '.join(model.tasks)})")
        if args.pair is not None and len(args.pair) != len(args.text):
            raise ConfigError(f"give one --pair per --text ({len(args.text)} --text, {len(args.pair)} --pair)")
        print(json.dumps(model.predict(args.task, args.text, args.pair), indent=2, default=float))
        return 0
    if args.command == "combine":
        from mtkd.recipes.distill import combine

        res = combine(args.results, args.output_dir)
        print(f"wrote {args.output_dir / 'results.json'} (seeds {res['seeds']})")
        return 0
    cfg = load_config(args.config, args.overrides)
    if args.command == "check-config":
        print(yaml.safe_dump(to_dict(cfg), sort_keys=False))
        return 0
    from mtkd.recipes import evaluate, finetune, mtl, pipeline, predict
    from mtkd.recipes.context import RunContext

    if args.command == "run":
        pipeline.run(cfg, args.output_dir)
        return 0
    ctx = RunContext(cfg, args.output_dir)
    seed = getattr(args, "seed", None) or cfg.seeds[0]
    if args.command == "mtl":
        print(json.dumps(mtl.run(ctx, ctx.out_dir, seed), indent=2))
    elif args.command == "finetune":
        print(json.dumps(finetune.run(ctx, ctx.out_dir, seed, args.init, cfg=cfg.finetune if args.init else cfg.mtl), indent=2))
    elif args.command == "evaluate":
        print(json.dumps(evaluate.run(ctx, {t: args.model for t in ctx.specs}, ctx.out_dir), indent=2))
    elif args.command == "predict":
        missing = predict.run(ctx, {t: args.model for t in ctx.specs}, ctx.out_dir)
        print(f"wrote {ctx.out_dir / 'submission.zip'}" + (f" (missing: {', '.join(missing)})" if missing else ""))
    return 0


if __name__ == "__main__":
    sys.exit(main())
