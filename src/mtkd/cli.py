"""Command line: `mtkd run CONFIG --output-dir DIR [--set key=value ...]` plus one command per stage."""

from __future__ import annotations

import argparse
import errno
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
  mtkd predict --model runs/mtl/model --task SST-2 --input reviews.tsv --output predictions.jsonl
  mtkd combine runs/kd-seed42 runs/kd-seed43 --output-dir results/kd   (mean ± std over the seeds)
  mtkd export runs/mtl/model --output-dir runs/onnx --quantize int8   (one ONNX graph, every head; int8)
  mtkd serve runs/mtl/model --port 8000   (HTTP JSON API: POST /predict, GET /tasks, GET /health)
  mtkd tasks --tasks-file my_tasks.yaml MyTask   (a custom task, validated, defaults filled in)
  mtkd check-config configs/glue-cpu.yaml --data   (everything run checks before training, every row)
"""


USER_FIXABLE_ERRNOS = (errno.EROFS, errno.EACCES, errno.EPERM, errno.ENOSPC, errno.EDQUOT)


def _config_args(p):
    p.add_argument("config", help="experiment YAML (see configs/)")
    p.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
                   help="override a config value, e.g. mtl.lr=1e-4 (repeatable; ~key deletes)")


def build_parser() -> argparse.ArgumentParser:
    ap = argparse.ArgumentParser(prog="mtkd", description="Multi-task learning and knowledge distillation (MT-DNN, MT-DNN-KD).",
                                 epilog=EPILOG, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("-v", "--verbose", action="store_true")
    sub = ap.add_subparsers(dest="command", required=True)

    _add_training_commands(sub)
    _add_predict_command(sub)
    _add_combine_command(sub)
    _add_serving_commands(sub)
    _add_inspection_commands(sub)
    return ap


def _add_training_commands(sub) -> None:
    """run (every stage of a config) and one command per stage: mtl, finetune, evaluate."""
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

    p = sub.add_parser("evaluate", help="dev (or labelled test) metrics of a model -> DIR/metrics.json, metrics.md")
    _config_args(p)
    p.add_argument("--model", required=True, type=Path, help="model folder used for every task")
    p.add_argument("--output-dir", required=True, type=Path)
    p.add_argument("--split", default="dev", metavar="PREFIX",
                   help="score every split whose name starts with PREFIX (default: dev; test: the labelled test "
                        "files, written under \"test\" in metrics.json; unlabelled ones are listed, not scored)")


def _add_predict_command(sub) -> None:
    """predict: new text, an input file, or a config's test sets (a GLUE submission)."""
    p = sub.add_parser("predict", help="predict new text (--text, --input FILE) or write a GLUE submission (CONFIG --output-dir)",
                       description="Three modes: CONFIG --output-dir DIR writes test predictions (and submission.zip "
                                   "when a task is a GLUE task); "
                                   "--task T --text ... prints predictions as JSON; --task T --input FILE --output FILE "
                                   "writes one prediction per input row. Without --output-dir the config (optional) only "
                                   "sets predict.batch_size, predict.max_tokens and data.max_seq_len: texts run sorted "
                                   "by length in batches of at most that many texts and padded tokens, cut at "
                                   "data.max_seq_len when given, else at each task's trained length (saved with the model).")
    p.add_argument("config", nargs="?", help="with --output-dir: predict every test split of the config's tasks")
    p.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE")
    p.add_argument("--model", required=True, type=Path)
    p.add_argument("--task", action="append", default=[], help="task head(s) to use (repeatable)")
    p.add_argument("--text", action="append", default=[], help="input text (repeatable)")
    p.add_argument("--pair", action="append", default=None, help="second text of a pair task (one per --text)")
    p.add_argument("--input", type=Path, default=None,
                   help="file of texts to predict: TSV with a header row (no quoting, as GLUE), CSV, JSONL "
                        "(one object per line) or JSON; format from the suffix (.tsv/.csv/.jsonl/.json, other: TSV) "
                        "or --input-format")
    p.add_argument("--input-format", choices=["tsv", "csv", "jsonl", "json"], default=None)
    p.add_argument("--id-column", default=None,
                   help="column/key of the example id (default: id; a JSON {id: record} file: its keys)")
    p.add_argument("--text-column", default="text", help="column/key of the text (default: text)")
    p.add_argument("--pair-column", default=None,
                   help="column/key of the second text, read when a task is a pair task or this is given (default: pair)")
    p.add_argument("--output", type=Path, default=None,
                   help="with --input: predictions file, TSV if it ends in .tsv (id, then one column per task), "
                        "else JSONL ({\"id\", \"predictions\": {task: value}}), rows in input order")
    p.add_argument("--probs", action="store_true",
                   help="with --input: also write class probabilities of classification tasks")
    p.add_argument("--output-dir", type=Path, default=None)


def _add_combine_command(sub) -> None:
    """combine: one results table over the seeds of an experiment."""
    p = sub.add_parser("combine", help="merge experiment results of the same config run with different seeds -> DIR/results.json, .md, charts")
    p.add_argument("results", nargs="+", type=Path, help="results.json files (or the run folders holding them)")
    p.add_argument("--output-dir", required=True, type=Path)


def _add_serving_commands(sub) -> None:
    """export (one ONNX graph) and serve (HTTP JSON API)."""
    p = sub.add_parser("export", help="one ONNX graph for the encoder and every head (+ tokenizer, task specs) -> DIR",
                       description="Export a model folder to ONNX: DIR/model.onnx (inputs input_ids, attention_mask "
                                   "[, token_type_ids]; one output per task), the tokenizer and mtkd_export.json "
                                   "(the tasks, labels, lengths), served by ONNX Runtime without PyTorch "
                                   "(mtkd.onnx_model.OnnxModel, mtkd serve DIR). The graph is checked against PyTorch on "
                                   "real examples of varied length (max abs diff <= 1e-4) before anything is written. "
                                   "Needs pip install 'mtkd[onnx]'.")
    p.add_argument("model", type=Path, help="mtkd model folder (a stage's DIR/model)")
    p.add_argument("--output-dir", required=True, type=Path)
    p.add_argument("--quantize", choices=["int8"], default=None,
                   help="int8: ONNX Runtime dynamic quantization; prints each task's dev metric before and after "
                        "and the speed ratio against PyTorch")
    p.add_argument("--data-root", type=Path, default=None,
                   help="where the tasks' dev files are (default $MTKD_DATA_ROOT or ../shared/data/glue): the check's "
                        "examples and the int8 dev metrics; without them built-in sentences are used")
    p.add_argument("--dev-cap", type=int, default=1000, help="dev examples per split for the int8 metrics (default 1000)")
    p.add_argument("--exporter", choices=["torchscript", "dynamo"], default="torchscript",
                   help="PyTorch's ONNX exporter: torchscript (default; the graph ONNX Runtime fuses) or dynamo (torch.export)")
    p.add_argument("--no-optimize", action="store_true",
                   help="keep the exporter's graph (no ONNX Runtime transformer fusions)")

    p = sub.add_parser("serve", help="HTTP JSON API over a model folder or ONNX export (POST /predict, GET /tasks, GET /health)",
                       description="Serve a model folder (PyTorch) or an ONNX export folder over HTTP: POST /predict "
                                   "{\"texts\": [...], \"pairs\": [...], \"tasks\": [...], \"probabilities\": false}, "
                                   "GET /tasks, GET /health. Concurrent requests are batched into one model call "
                                   "(up to --max-batch texts or --max-wait-ms). Needs pip install 'mtkd[serve]'.")
    p.add_argument("model", type=Path, help="mtkd model folder, or an `mtkd export` folder")
    p.add_argument("--host", default="127.0.0.1",
                   help="address to listen on (default 127.0.0.1: this machine only). 0.0.0.0 (or ::) listens on "
                        "every network interface: anyone who can reach the machine can use the API, so set "
                        "--api-key and, behind a name, --allowed-host")
    p.add_argument("--port", type=int, default=8000, help="port (default 8000; 0: a free port, printed)")
    p.add_argument("--max-batch", type=int, default=64, help="most texts per model call (default 64)")
    p.add_argument("--max-wait-ms", type=float, default=5.0,
                   help="how long a request waits for others to share its model call (default 5 ms)")
    p.add_argument("--max-texts", type=int, default=256, help="most texts per request (default 256; more: 413)")
    p.add_argument("--max-chars", type=int, default=20000, help="most characters per text (default 20000; more: 413)")
    p.add_argument("--max-body-mb", type=float, default=16.0, help="largest request body in MB (default 16; more: 413)")
    p.add_argument("--timeout-s", type=float, default=30.0,
                   help="a request's deadline: body upload, queue and model (default 30; past it: 504, or 408 while "
                        "the body is still arriving); requests whose client went away are dropped, not run")
    p.add_argument("--max-queue", type=int, default=1024,
                   help="most texts waiting for the model (default 1024; a request past it: 503 with Retry-After)")
    p.add_argument("--max-connections", type=int, default=256,
                   help="most open connections (default 256; past it: 503); idle keep-alive connections close after "
                        "5 s, a request's headers must arrive within 10 s")
    p.add_argument("--api-key", default=None,
                   help="require 'Authorization: Bearer KEY' on every request (default: $MTKD_API_KEY; unset: none); "
                        "prefer the variable: a command line is visible to other users of the machine")
    p.add_argument("--allowed-host", action="append", default=None, metavar="NAME",
                   help="a Host header to answer (repeatable; default: the loopback names for a loopback --host, the "
                        "address itself for another, any for 0.0.0.0/::); '*': any. Refusing other names stops DNS "
                        "rebinding from a web page")
    p.add_argument("--access-log", action="store_true", help="log every request (uvicorn's access log)")


def _add_inspection_commands(sub) -> None:
    """tasks (the task definitions) and check-config (what run checks before training)."""
    p = sub.add_parser("tasks", help="print task definitions: the built-in GLUE tasks (and those of --tasks-file), resolved")
    p.add_argument("names", nargs="*", metavar="NAME", help="print only these tasks")
    p.add_argument("--tasks-file", type=Path, default=None,
                   help="a YAML of custom task definitions (a config's tasks_file): validated, printed with defaults filled in")
    p = sub.add_parser("check-config", help="check a config as `run` does before training; print the resolved YAML",
                       description="Checks what `run` checks before it trains, with the same messages: the config's keys "
                                   "and values, the tasks_file and every task and split key, each encoder's positions "
                                   "against data.max_seq_len and the tasks' max_seq_len, and every split file: that it "
                                   "exists, its header or columns, the field mapping and the first row. With --data it "
                                   "also reads every row (labels, regression numbers, empty texts, duplicate ids). "
                                   "Exit 0 and the resolved config on stdout, or exit 2: a problem with the config "
                                   "itself (its keys and values, the tasks_file, the tasks, the lengths) stops at the "
                                   "first one; the problems with the split files are all listed in one error.")
    _config_args(p)
    p.add_argument("--data", action="store_true",
                   help="also read every row of every split, as run does when it tokenises (no tokenising)")


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
        rc = _dispatch(args)
        sys.stdout.flush()  # a reader gone away (`mtkd tasks | head`) shows here, not at exit
        return rc
    except BrokenPipeError:
        _silence_stdout()
        return 141  # 128 + SIGPIPE: what a shell reports for a tool stopped by a closed pipe
    except MtkdError as e:
        print(f"mtkd: error: {e}", file=sys.stderr)
        return 2
    except OSError as e:  # the file system refused (read-only, permissions, full): one line, not a traceback
        if e.errno not in USER_FIXABLE_ERRNOS:
            raise
        print(f"mtkd: error: {e.filename or 'a file'}: {os.strerror(e.errno)}", file=sys.stderr)
        return 2


def _silence_stdout() -> None:
    """After a broken pipe: point stdout at /dev/null, so the interpreter's final flush of what is
    still buffered raises nothing (no traceback on `mtkd tasks | head`)."""
    try:
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, sys.stdout.fileno())
        os.close(devnull)
    except (OSError, ValueError, AttributeError):  # stdout is not a real file (captured in tests)
        pass


def _check_output_dir(folder: Path | None, flag: str = "--output-dir") -> None:
    """A folder to write into must not be a file, nor lie under one (a one-line error, not a traceback)."""
    if folder is None:
        return
    from mtkd.errors import ConfigError

    if folder.exists() and not folder.is_dir():
        raise ConfigError(f"{flag} {folder} is a file, not a folder")
    for parent in folder.parents:
        if parent.exists():
            if not parent.is_dir():
                raise ConfigError(f"{flag} {folder}: {parent} is a file, not a folder")
            break


def _dispatch(args) -> int:
    from mtkd.config import load_config, task_specs, validate

    _check_output_dir(getattr(args, "output_dir", None))
    if args.command == "tasks":
        return _tasks(args)
    if args.command == "predict" and args.output_dir is None:
        return _predict_new_text(args, load_config(args.config, args.overrides))
    if args.command == "serve":
        return _serve(args)
    if args.command == "export":
        return _export(args)
    if args.command == "combine":
        from mtkd.report import combine

        res = combine(args.results, args.output_dir)
        print(f"wrote {args.output_dir / 'results.json'} (seeds {res['seeds']})")
        return 0
    cfg = load_config(args.config, args.overrides)
    validate(cfg, task_specs(cfg), str(args.config))  # the config's rules about its tasks, before anything runs
    if args.command == "check-config":
        return _check_config(args, cfg)
    from mtkd.recipes import evaluate, finetune, mtl, pipeline, predict
    from mtkd.recipes.inputs import prepare_data
    from mtkd.recipes.runner import Runner
    from mtkd.task_data import TaskData

    if args.command == "run":
        pipeline.run(cfg, args.output_dir)
        return 0
    data, runner = TaskData(cfg), Runner(cfg, args.output_dir)
    out = runner.out_dir
    # every rank at the same point: rank 0 tokenises what the command reads, the others wait
    prepare_data(cfg, data, runner.accelerator, {"mtl": ("train",), "finetune": ("train",), "predict": ("test",)}.get(
        args.command) or (evaluate.split_prefix(data.specs, args.split),))
    seed = cfg.seeds[0] if getattr(args, "seed", None) is None else args.seed
    if args.command == "mtl":
        print(json.dumps(runner.run([mtl.job(cfg, data, out, seed)])[0], indent=2))
    elif args.command == "finetune":
        jobs = finetune.jobs(cfg, data, out, seed, args.init, train=cfg.finetune if args.init else cfg.mtl)
        print(json.dumps({job.tasks[0]: summary for job, summary in zip(jobs, runner.run(jobs))}, indent=2))
    elif args.command == "evaluate":
        print(json.dumps(evaluate.evaluate(data, runner, {t: args.model for t in data.specs}, out, split=args.split),
                         indent=2))
    elif args.command == "predict":
        missing = predict.predict(data, runner, {t: args.model for t in data.specs}, out)
        written = out / ("submission.zip" if predict.is_glue(data.specs) else "predictions")
        print(f"wrote {written}" + (f" (missing: {', '.join(missing)})" if missing else ""))
    return 0


def _export(args) -> int:
    """`mtkd export MODEL --output-dir DIR [--quantize int8]`: the progress lines and the check's result."""
    from mtkd.export import export_onnx

    export_onnx(args.model, args.output_dir, quantize=args.quantize, data_root=args.data_root, dev_cap=args.dev_cap,
                exporter=args.exporter, optimize=not args.no_optimize, echo=lambda line: print(line, flush=True))
    return 0


def _serve(args) -> int:
    """`mtkd serve MODEL`: refuses bad limits and a missing model before listening."""
    from mtkd.errors import ConfigError
    from mtkd.serve import serve

    for flag, v in (("--max-batch", args.max_batch), ("--max-texts", args.max_texts), ("--max-chars", args.max_chars),
                    ("--max-queue", args.max_queue), ("--max-connections", args.max_connections)):
        if v < 1:
            raise ConfigError(f"serve: {flag} must be >= 1, got {v}")
    if not args.max_wait_ms >= 0 or not args.max_body_mb > 0 or not args.timeout_s > 0:
        raise ConfigError(f"serve: --max-wait-ms must be >= 0, --max-body-mb and --timeout-s > 0 "
                          f"(got {args.max_wait_ms}, {args.max_body_mb}, {args.timeout_s})")
    if not 0 <= args.port <= 65535:
        raise ConfigError(f"serve: --port must be 0..65535, got {args.port}")
    serve(args.model, args.host, args.port, max_batch=args.max_batch, max_wait_ms=args.max_wait_ms,
          max_texts=args.max_texts, max_chars=args.max_chars, max_body_bytes=max(1, int(args.max_body_mb * 2**20)),
          timeout_s=args.timeout_s, max_queue=args.max_queue, max_connections=args.max_connections,
          api_key=args.api_key, allowed_hosts=args.allowed_host, access_log=args.access_log,
          print_fn=lambda line: print(line, flush=True))
    return 0


def _tasks(args) -> int:
    """`mtkd tasks [NAME ...] [--tasks-file F]`: the task definitions as run resolves them (YAML,
    defaults filled in): the GLUE tasks, then F's (every one validated)."""
    import yaml

    from mtkd.errors import ConfigError, did_you_mean
    from mtkd.tasks import GLUE_TASK_NAMES, load_task_specs, read_tasks_file

    specs = load_task_specs(None, args.tasks_file)
    for name in args.names:
        if name not in specs:
            raise ConfigError(f"mtkd tasks: no task {name!r}{did_you_mean(name, specs)}; "
                              f"the tasks are {', '.join(specs)}")
    chosen = {n: s for n, s in specs.items() if not args.names or n in args.names}
    own = set(read_tasks_file(args.tasks_file)) if args.tasks_file else set()
    glue = {n: s.to_dict() for n, s in chosen.items() if n not in own}
    custom = {n: s.to_dict() for n, s in chosen.items() if n in own}
    if not args.tasks_file:
        print(yaml.safe_dump(glue, sort_keys=False))
        return 0
    if glue:  # one YAML document; a comment heads each part
        print(f"# built-in GLUE tasks ({', '.join(n for n in GLUE_TASK_NAMES if n in glue)})")
        print(yaml.safe_dump(glue, sort_keys=False), end="")
    if custom:
        print(f"# tasks_file {args.tasks_file}")
        print(yaml.safe_dump(custom, sort_keys=False), end="")
    return 0


def _check_config(args, cfg) -> int:
    """`mtkd check-config CONFIG [--data]`: the checks `run` makes before training (the config's rules
    checked by _dispatch, TaskData builds the tasks, check_inputs the lengths and files), then the
    resolved config on stdout."""
    import yaml

    from mtkd.config import to_dict
    from mtkd.recipes.inputs import check_inputs
    from mtkd.task_data import TaskData

    data = TaskData(cfg)
    notes = check_inputs(cfg, data, rows=args.data)
    print(yaml.safe_dump(to_dict(cfg), sort_keys=False), end="")
    for note in notes:
        print(f"note: {note}: predict skips it with a warning (a GLUE leaderboard entry is also listed "
              f"in submission.zip's MISSING.txt)", file=sys.stderr)
    n_files = sum(1 for s in data.specs.values() for _ in s.splits) - len(notes)
    print(f"checked: config, tasks ({len(data.specs)}), encoder lengths, files ({n_files}: "
          f"{'every row' if args.data else 'headers, columns, first rows; rows not read: add --data'})", file=sys.stderr)
    return 0


def _predict_new_text(args, cfg) -> int:
    """`mtkd predict --task T (--text ... | --input FILE --output FILE)`: refuses empty texts, a pair
    task without its second texts, and bad input rows (naming file and line) before predicting."""
    from mtkd.errors import ConfigError, did_you_mean

    if int(os.environ.get("WORLD_SIZE", "1")) > 1:
        raise ConfigError("predict --text/--input runs in one process; start it without torchrun/accelerate launch")
    if not args.task or bool(args.text) == (args.input is not None):
        raise ConfigError("predict: give --task and either --text or --input FILE --output FILE "
                          "(or CONFIG --output-dir DIR for a submission)")
    file_only = {"--output": args.output, "--id-column": args.id_column, "--pair-column": args.pair_column,
                 "--input-format": args.input_format, "--probs": args.probs or None}
    if args.input is None:
        given = [k for k, v in file_only.items() if v is not None] + (["--text-column"] if args.text_column != "text" else [])
        if given:
            raise ConfigError(f"predict: {', '.join(given)} go with --input FILE")
        for flag, values in (("--text", args.text), ("--pair", args.pair or [])):
            empty = [str(i + 1) for i, t in enumerate(values) if not t.strip()]
            if empty:
                raise ConfigError(f"predict: {flag} number {', '.join(empty)} is empty")
        if args.pair is not None and len(args.pair) != len(args.text):
            raise ConfigError(f"give one --pair per --text ({len(args.text)} --text, {len(args.pair)} --pair)")
    else:
        if args.pair is not None:
            raise ConfigError("predict: --pair goes with --text; with --input, name the column with --pair-column")
        if args.output is None:
            raise ConfigError("predict: --input needs --output FILE (.tsv for TSV, else JSONL)")
        if not args.input.is_file():
            raise ConfigError(f"--input {args.input}: file not found")
        if args.output.is_dir():
            raise ConfigError(f"--output {args.output} is a folder, not a file")
        _check_output_dir(args.output.parent, "--output")
    from mtkd.model import MTModel

    model = MTModel.from_pretrained(args.model)
    for t in args.task:
        if t not in model.tasks:
            raise ConfigError(f"--task {t}: not a task of {args.model}{did_you_mean(t, model.tasks)} "
                              f"(it has {', '.join(model.tasks)})")
    pair_tasks = [t for t in args.task if "text_b" in model.tasks[t].fields]
    kwargs = {"batch_size": cfg.predict.batch_size, "max_tokens": cfg.predict.max_tokens,
              # the lengths the model was trained at, unless data.max_seq_len is given (config or --set)
              "max_len": cfg.data.max_seq_len if "data.max_seq_len" in cfg.given else None}
    if args.input is None:
        if pair_tasks and args.pair is None:
            raise ConfigError(f"predict: task {', '.join(pair_tasks)} is a pair task: give one --pair (second text) per --text")
        print(json.dumps(model.predict(args.task, args.text, args.pair, **kwargs), indent=2, default=float))
        return 0
    ids, texts, pairs = _read_predict_input(args, need_pair=bool(pair_tasks))
    answers = model.predict(list(args.task), texts, pairs, return_probs=args.probs, as_json=True, **kwargs)
    _write_predictions(args.output, ids, answers)
    print(f"wrote {len(ids)} predictions ({', '.join(args.task)}) to {args.output}")
    return 0


def _read_predict_input(args, need_pair: bool):
    """(ids, texts, pairs or None) from --input, read by mtkd.data's strict readers: a missing
    column or key, an empty text or a duplicate id is a DataError naming the file and line."""
    from mtkd.data import read_split
    from mtkd.tasks import FileFormat, HeadKind, SplitSource, TaskSpec

    suffix = args.input.suffix.lower().lstrip(".")
    fmt = FileFormat(args.input_format or (suffix if suffix in ("tsv", "csv", "jsonl", "json") else "tsv"))
    fields = {"text_a": args.text_column}
    if args.id_column is not None or fmt != FileFormat.JSON:
        fields["id"] = args.id_column or "id"
    if need_pair or args.pair_column is not None:
        fields["text_b"] = args.pair_column or "pair"
    # a reader's spec for one file, not a task definition (its split is named "input"): not validated as one
    spec = TaskSpec.model_construct(name="--input", head=HeadKind.REGRESSION, fields=fields,
                                    splits={"input": SplitSource(path=str(args.input.resolve()), format=fmt)})
    raw = read_split(spec, "input")
    return raw.ids, raw.text_a, raw.text_b


def _write_predictions(path: Path, ids, answers: dict[str, list[dict]]) -> None:
    """One row per input, in input order, from each task's answer objects (as the HTTP API gives
    them): TSV (id, one column per task, then `task:label` probability columns) when `path` ends in
    .tsv, else JSONL {"id", "predictions": {task: value}, "probabilities"}."""
    from mtkd.errors import DataError

    columns = {t: [a.get("label", a.get("score")) for a in rows] for t, rows in answers.items()}
    prob_cols = {t: [a["probabilities"] for a in rows] for t, rows in answers.items() if rows and "probabilities" in rows[0]}
    tsv = path.suffix.lower() == ".tsv"
    bad = next((i for i in ids if any(c in i for c in "\t\r\n")), None) if tsv else None
    if bad is not None:
        raise DataError(path, f"example id {bad!r} holds a tab or line break; write JSONL instead (--output X.jsonl)")
    from mtkd.files import atomic_output

    with atomic_output(path, "the predictions") as tmp, open(tmp, "w", encoding="utf-8") as f:
        if tsv:
            header = ["id", *columns] + [f"{t}:{lab}" for t, probs in prob_cols.items() for lab in probs[0]]
            f.write("\t".join(header) + "\n")
        for r, ex_id in enumerate(ids):
            if tsv:
                cells = [ex_id] + [str(columns[t][r]) for t in columns]
                cells += [f"{p:.6f}" for probs in prob_cols.values() for p in probs[r].values()]
                f.write("\t".join(cells) + "\n")
            else:
                row = {"id": ex_id, "predictions": {t: columns[t][r] for t in columns}}
                if prob_cols:
                    row["probabilities"] = {t: {lab: round(p, 6) for lab, p in probs[r].items()}
                                            for t, probs in prob_cols.items()}
                f.write(json.dumps(row, ensure_ascii=False) + "\n")


if __name__ == "__main__":
    sys.exit(main())
