"""MT-DNN: a shared pretrained encoder (lexicon + transformer layers) with one output layer per task.

Saved as a Hugging Face style folder: config.json (encoder config + task definitions),
model.safetensors, tokenizer files; `MTModel.from_pretrained(folder)` loads it back.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import torch
from safetensors import SafetensorError
from safetensors.torch import load_file, save_file
from torch import nn
from transformers import AutoConfig, AutoTokenizer

from mtkd import inference
from mtkd.checkpoint import check_file, guarded_write, tensor_bytes
from mtkd.config import EncoderConfig
from mtkd.dropout import use_fast_dropout
from mtkd.encoders import (
    DEFAULT_ENCODER,
    check_encoder_dropout,
    check_first_token_pooling,
    encoder_config,
    load_encoder,
    max_positions,
    resolve_encoder,
    uses_token_types,
)
from mtkd.errors import CheckpointError
from mtkd.files import file_digest
from mtkd.heads import kind_of
from mtkd.tasks import TaskSpec, task_from_dict

log = logging.getLogger(__name__)

FORMAT_VERSION = 1
WEIGHTS_FILE = "model.safetensors"


def weights_sha256(folder: str | Path) -> str:
    """sha256 of a saved model folder's model.safetensors: the one recorded in config.json by
    save_pretrained, else (older folders) the file's hash. The identity of a model folder."""
    folder = Path(folder)
    try:
        recorded = (json.loads((folder / "config.json").read_text()).get("weights") or {}).get("sha256")
    except (OSError, ValueError, AttributeError):
        recorded = None
    if recorded:
        return recorded
    if not (folder / WEIGHTS_FILE).is_file():
        raise CheckpointError(f"{folder / WEIGHTS_FILE}: no such file (not an mtkd model folder)")
    return file_digest(folder / WEIGHTS_FILE)["sha256"]


class MTModel(nn.Module):
    """Shared encoder + ModuleDict of task heads. forward(batch, task) -> logits (B, C) or (B, 1)."""

    def __init__(self, encoder: nn.Module, tasks: dict[str, TaskSpec], tokenizer=None, encoder_name: str = ""):
        super().__init__()
        self.encoder = use_fast_dropout(encoder)  # CPU training: 16-bit dropout masks (see mtkd.dropout)
        self.use_token_types = uses_token_types(encoder)
        self.tasks = dict(tasks)
        self.tokenizer = tokenizer
        self.encoder_name = encoder_name
        hidden = encoder.config.hidden_size
        self.heads = nn.ModuleDict(
            {name: kind_of(spec).make_layer(hidden) for name, spec in tasks.items() if spec.head_of is None}
        )

    # ------------------------------------------------------------------------------ construction
    @classmethod
    def from_encoder(
        cls,
        name: str | None,
        tasks: dict[str, TaskSpec],
        *,
        num_hidden_layers: int | None = None,
        dropout: float | None = None,
        init: str = "pretrained",
    ) -> MTModel:
        """A fresh MT-DNN on a Hugging Face encoder ('default', a folder or a hub name).
        num_hidden_layers keeps only the first layers (a smaller student); dropout sets the
        shared layers' dropout (the paper's teachers use 0.1 / 0.2 / 0.3) through the family's own
        config fields (mtkd.encoders.ENCODER_DROPOUT_FIELDS) and is checked on every dropout module of
        the built encoder (ConfigError where it cannot be set); init='random' builds the architecture
        with random weights (tests). Refuses tokenizers that put no [CLS] / <s> token first."""
        path = resolve_encoder(name)
        config = encoder_config(path, num_hidden_layers, dropout)
        tokenizer = AutoTokenizer.from_pretrained(path, use_fast=True)
        check_first_token_pooling(tokenizer, f"encoder {name or DEFAULT_ENCODER!r}")
        encoder = load_encoder(config, path if init == "pretrained" else None)
        if dropout is not None:
            check_encoder_dropout(encoder, float(dropout), f"encoder {name or DEFAULT_ENCODER!r}")
        return cls(encoder, tasks, tokenizer, encoder_name=str(name or DEFAULT_ENCODER))

    def save_pretrained(self, folder: str | Path, card: dict | None = None) -> None:
        """config.json + model.safetensors + tokenizer files, written into `folder`. config.json
        records the weights' byte size and sha256 and the tokenizer's file names (from_pretrained
        checks them); weights and config are moved into place last. A failed write removes the
        partial files and raises DiskFullError ("no space left on <folder>: about N MB needed").
        Then the model card (README.md, model_card.json; `card`: the training record the recipes
        pass, see mtkd.model_card); a card that cannot be written is logged, never an error."""
        folder = Path(folder)
        folder.mkdir(parents=True, exist_ok=True)
        config = {
            "format": "mtkd",
            "format_version": FORMAT_VERSION,
            "encoder_name": self.encoder_name,
            "encoder_config": self.encoder.config.to_dict(),
            "tasks": {n: s.to_dict() for n, s in self.tasks.items()},
        }
        state = {k: v.detach().contiguous().cpu() for k, v in self.state_dict().items()}
        tmp, cfg_tmp = folder / (WEIGHTS_FILE + ".tmp"), folder / "config.json.tmp"
        with guarded_write(folder, [tmp, cfg_tmp], tensor_bytes(state) + 2**20, f"the model {folder}"):
            save_file(state, str(tmp), metadata={"format": "pt"})
            config["weights"] = {"file": WEIGHTS_FILE, **file_digest(tmp)}
            if self.tokenizer is not None:
                written = self.tokenizer.save_pretrained(str(folder))
                config["tokenizer_files"] = sorted({Path(f).name for f in written if Path(f).is_file()})
            cfg_tmp.write_text(json.dumps(config, indent=2))
            tmp.replace(folder / WEIGHTS_FILE)
            cfg_tmp.replace(folder / "config.json")
        try:
            from mtkd.model_card import write_model_card

            write_model_card(folder, training=card)
        except Exception as e:  # informational: the saved model is complete without it
            log.warning("%s: model card not written (%s: %s)", folder, type(e).__name__, e)

    @classmethod
    def from_pretrained(
        cls, folder: str | Path, tasks: dict[str, TaskSpec] | Sequence[str] | None = None, new_heads: bool = False
    ) -> MTModel:
        """Load a saved MT-DNN with all its heads, or those of `tasks`: a list of saved task names
        (a subset), or task definitions the saved heads must match (names, kinds, label sets; else
        CheckpointError says which differ). Saved heads not asked for are left out (logged). With
        `new_heads`, a task the model has no head for gets a freshly initialised one (fine-tuning an
        MTL model on a new task, paper Section 2.1)."""
        folder = Path(folder)
        config, cfg_path, weights = _read_model_folder(folder)
        saved = {n: task_from_dict(n, d, str(cfg_path)) for n, d in config["tasks"].items()}
        wanted, fresh, left_out = _heads_to_load(saved, tasks, folder, new_heads)
        enc_cfg = dict(config["encoder_config"])
        try:
            enc_config = AutoConfig.for_model(enc_cfg.pop("model_type", None), **enc_cfg)
        except (ValueError, KeyError, TypeError) as e:
            raise CheckpointError(f"{cfg_path}: field 'encoder_config' is not a usable encoder config ({e})") from None
        encoder = load_encoder(enc_config, None)
        tokenizer = inference.load_tokenizer(folder)
        model = cls(encoder, wanted, tokenizer, encoder_name=config.get("encoder_name", ""))
        model.load_weights(weights, strict_heads=not fresh, skip_heads=left_out)
        return model

    def load_weights(self, path: str | Path, strict_heads: bool = True, skip_heads: Sequence[str] = ()) -> None:
        """Load encoder + head weights from a safetensors file; heads of tasks absent from the file
        keep their fresh initialisation only when strict_heads is False; the file's heads named in
        `skip_heads` are not loaded."""
        try:
            state = load_file(str(path))
        except (SafetensorError, OSError) as e:
            raise CheckpointError(f"{path}: not a readable safetensors file ({e})") from None
        skip = tuple(f"heads.{h}." for h in skip_heads)
        state = {k: v for k, v in state.items() if not (skip and k.startswith(skip))}
        missing, unexpected = self.load_state_dict(state, strict=False)
        missing = [k for k in missing if strict_heads or not k.startswith("heads.")]
        if missing or unexpected:
            raise CheckpointError(
                f"{path}: weights do not match the model: missing {missing[:5]}, unexpected {unexpected[:5]}"
            )

    # --------------------------------------------------------------------------------- forward
    def encode(self, input_ids, attention_mask, token_type_ids=None) -> torch.Tensor:
        """The [CLS] vector x of Eq. 1, (B, H): the first position's output, which is [CLS] for BERT,
        DistilBERT, ELECTRA, DeBERTa-v2 and ModernBERT and <s> for RoBERTa (check_first_token_pooling
        refuses tokenizers that put no such token first)."""
        kwargs = {"input_ids": input_ids, "attention_mask": attention_mask}
        if token_type_ids is not None and self.use_token_types:
            kwargs["token_type_ids"] = token_type_ids
        return self.encoder(**kwargs).last_hidden_state[:, 0]

    def forward(self, input_ids, attention_mask, token_type_ids=None, task: str | None = None):
        """Logits of one task's head: (B, C) classification, (B, 1) regression/ranking."""
        return self.heads[self.tasks[task].head_name](self.encode(input_ids, attention_mask, token_type_ids))

    def head_logits(self, cls_vec: torch.Tensor, tasks: Sequence[str]) -> dict[str, torch.Tensor]:
        """Every requested head on one encoder pass."""
        return {t: self.heads[self.tasks[t].head_name](cls_vec) for t in tasks}

    @torch.inference_mode()
    def predict(
        self,
        tasks: str | Sequence[str],
        texts: Sequence[str],
        text_pairs: Sequence[str] | None = None,
        batch_size: int = 64,
        max_len: int | None = None,
        return_probs: bool = False,
        max_tokens: int | None = 8192,
        as_json: bool = False,
    ):
        """Predict new text. One encoder pass per batch serves every requested head.

        Texts are tokenised once, run sorted by length in batches of at most `batch_size` texts and
        `max_tokens` padded tokens (`mtkd.inference.length_batches`, as for the soft targets), and the
        results come back in input order. Inputs are cut at `max_len` tokens; None (the default):
        at each task's trained length (`train_max_len`: the `max_seq_len` saved with the model, else
        512). Either is capped at the encoder's positions
        (`max_positions`). Requested tasks of different lengths are served per length: the texts
        are tokenised once per distinct length, and each encoder pass serves that length's heads.

        Returns, for one task, a list of label names (classification), floats (regression, clipped
        to the task's label range) or scores (ranking); for several tasks, {task: list}. With
        return_probs, classification tasks return (N, C) probability arrays instead. With as_json, each
        answer is the object the HTTP API returns ({"label"} and with return_probs {"probabilities":
        {label: p}}; {"score"})."""
        if self.tokenizer is None:
            raise CheckpointError("this model has no tokenizer attached")
        was_training = self.training
        self.eval()
        try:
            return inference.predict(
                self,
                tasks,
                texts,
                text_pairs,
                batch_size=batch_size,
                max_len=max_len,
                return_probs=return_probs,
                max_tokens=max_tokens,
                max_positions=max_positions(self.encoder.config),
                as_json=as_json,
            )
        finally:
            self.train(was_training)

    def train_max_len(self, task: str) -> int:
        """The length `task` was trained at: its training split's max_seq_len, else the task's (saved
        with the model by every mtkd run), else 512."""
        return inference.train_max_len(self.tasks[task])

    @torch.inference_mode()
    def run_batch(
        self, names: list[str], ids: np.ndarray, mask: np.ndarray, types: np.ndarray | None
    ) -> dict[str, np.ndarray]:
        """One encoder pass on a padded numpy batch, every head of `names` on it: {task: (B, C) logits}
        (how the prediction side, mtkd.inference, runs any model)."""
        device = next(self.parameters()).device
        cls_vec = self.encode(
            torch.from_numpy(ids).to(device),
            torch.from_numpy(mask).to(device),
            torch.from_numpy(types).to(device) if types is not None else None,
        )
        return {t: logits.float().cpu().numpy() for t, logits in self.head_logits(cls_vec, names).items()}


def _read_model_folder(folder: Path) -> tuple[dict, Path, Path]:
    """(config.json's record, its path, the weights' path) of a saved model folder, refused
    (CheckpointError) when a file is missing, unreadable or does not match what was recorded."""
    cfg_path, weights = folder / "config.json", folder / WEIGHTS_FILE
    if not cfg_path.is_file() or not weights.is_file():
        raise CheckpointError(f"{folder}: not an mtkd model folder (needs config.json and model.safetensors)")
    try:
        config = json.loads(cfg_path.read_text())
    except (OSError, ValueError) as e:
        raise CheckpointError(f"{cfg_path}: unreadable ({e}); the model folder is damaged") from None
    if not isinstance(config, dict) or config.get("format") != "mtkd":
        got = config.get("format") if isinstance(config, dict) else config
        raise CheckpointError(f"{cfg_path}: field 'format' is {got!r}, expected 'mtkd'")
    for key in ("tasks", "encoder_config"):
        if not isinstance(config.get(key), dict):
            raise CheckpointError(f"{cfg_path}: field {key!r} is missing; the model folder is damaged")
    problem = check_file(weights, config.get("weights"))  # no record (older folders): presence only
    if problem:
        raise CheckpointError(f"{weights}: {problem}; the model folder is damaged (copy it again or retrain)")
    missing = [n for n in config.get("tokenizer_files", []) if not (folder / n).is_file()]
    if missing:
        raise CheckpointError(f"{folder}: tokenizer files missing: {', '.join(missing)} (save_pretrained wrote them)")
    return config, cfg_path, weights


def _heads_to_load(
    saved: dict[str, TaskSpec], tasks: dict[str, TaskSpec] | Sequence[str] | None, folder: Path, new_heads: bool
) -> tuple[dict[str, TaskSpec], list[str], list[str]]:
    """(the tasks the loaded model gets, the heads initialised fresh, the saved heads not loaded)
    for MTModel.from_pretrained's `tasks` and `new_heads`."""
    if tasks is not None and not isinstance(tasks, dict):
        unknown = [t for t in tasks if t not in saved]
        if unknown:
            raise CheckpointError(f"{folder}: no head for {', '.join(map(repr, unknown))} (it has {sorted(saved)})")
        tasks = {t: saved[t] for t in tasks}
    if tasks is not None:
        check_heads_match(saved, tasks, str(folder), allow_new=new_heads)
    wanted = tasks if tasks is not None else saved
    fresh = [n for n, s in wanted.items() if s.head_of is None and n not in saved]
    left_out = sorted(
        n for n, s in saved.items() if s.head_of is None and n not in {w.head_name for w in wanted.values()}
    )
    if fresh:
        log.info("%s: new heads for %s (the model had none), initialised fresh", folder, ", ".join(fresh))
    if left_out:
        log.info("%s: heads not loaded (not asked for): %s", folder, ", ".join(left_out))
    return wanted, fresh, left_out


def check_heads_match(
    saved: dict[str, TaskSpec], wanted: dict[str, TaskSpec], where: str, allow_new: bool = False
) -> None:
    """Refuse a checkpoint trained for another task set: every head the run needs must exist in the
    checkpoint (unless `allow_new`: it gets a fresh head) with the same kind and label names."""
    problems = []
    for name, spec in wanted.items():
        if spec.head_of is not None:
            continue
        s = saved.get(name)
        if s is None and allow_new:
            continue
        if s is None:
            problems.append(f"task {name!r} has no head in the checkpoint (it has {sorted(saved)})")
        elif s.head != spec.head or s.labels != spec.labels:
            problems.append(
                f"task {name!r}: checkpoint head is {s.head.value} {list(s.labels)}, config wants "
                f"{spec.head.value} {list(spec.labels)}"
            )
    if problems:
        raise CheckpointError(f"{where}: checkpoint does not match the configured tasks: " + "; ".join(problems))


def new_model(
    encoder_cfg: EncoderConfig,
    tasks: dict[str, TaskSpec],
    device,
    dropout: float | None = None,
    encoder: str | None = None,
) -> MTModel:
    """A fresh MT-DNN on `device` from an encoder section of the config (`encoder`, or a student's
    `kd.student`); `dropout` and `encoder` override its shared-layer dropout and weights (a teacher
    candidate)."""
    model = MTModel.from_encoder(
        encoder or encoder_cfg.name,
        tasks,
        num_hidden_layers=encoder_cfg.num_hidden_layers,
        dropout=encoder_cfg.dropout if dropout is None else dropout,
        init=encoder_cfg.init,
    )
    return model.to(device)


def load_model(folder: str | Path, tasks: dict[str, TaskSpec], device, new_heads: bool = False) -> MTModel:
    """A saved model with the heads of `tasks` on `device`; with `new_heads` a task the model has no
    head for gets a fresh one (fine-tuning on a new task)."""
    return MTModel.from_pretrained(folder, tasks=tasks, new_heads=new_heads).to(device)
