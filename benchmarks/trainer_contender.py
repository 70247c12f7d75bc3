"""Hugging Face `Trainer` as a benchmark contender: AutoModelForSequenceClassification trained on the
same examples as mtkd, with the same optimizer and schedule, timed by the same StepClock."""

from __future__ import annotations

import gc
import shutil
import tempfile
from pathlib import Path

import numpy as np

from suite import BATCH, LR, Env
from timing import StepClock


def hf_features(batches: list[tuple[object, np.ndarray]], pad_to: int | None, num_labels: int) -> list[dict]:
    """The examples of `batches` [(EncodedSplit, indices)], in that order, as a list of feature dicts
    for Trainer (python lists, as run_glue's `datasets.map` produces). pad_to=128: run_glue's default
    padding='max_length'. Labels: the class index; regression labels (STS-B, MTL mix only) become 0,
    out-of-range classes are folded with `% num_labels` (label values do not change the cost)."""
    feats = []
    for d, idx in batches:
        regression = d.labels is not None and d.labels.dtype.kind == "f"
        for i in idx:
            s, e = int(d.offsets[i]), int(d.offsets[i + 1])
            ids = d.input_ids[s:e].tolist()
            types = d.token_type_ids[s:e].tolist()
            mask = [1] * len(ids)
            if pad_to is not None:
                k = pad_to - len(ids)
                ids, types, mask = ids + [0] * k, types + [0] * k, mask + [0] * k
            y = 0 if regression else int(d.labels[i]) % num_labels
            feats.append({"input_ids": ids, "token_type_ids": types, "attention_mask": mask, "labels": y})
    return feats


def training_args(out_dir: Path, steps: int, seed: int, sampling: str):
    """TrainingArguments matching mtkd's MTL settings (batch 32, lr 2e-4, linear schedule with 10 %
    warm-up, clip 1.0, fp32, no saving), across the transformers versions that renamed the options."""
    import inspect

    from transformers import TrainingArguments

    params = inspect.signature(TrainingArguments.__init__).parameters
    kw = dict(output_dir=str(out_dir), per_device_train_batch_size=BATCH, max_steps=steps, learning_rate=LR,
              weight_decay=0.0, max_grad_norm=1.0, lr_scheduler_type="linear", warmup_steps=int(0.1 * steps),
              seed=seed, data_seed=seed, save_strategy="no", report_to="none", dataloader_num_workers=0,
              fp16=False, bf16=False, disable_tqdm=False)
    if "use_cpu" in params:
        kw["use_cpu"] = True
    if sampling != "random":
        if "train_sampling_strategy" in params:  # transformers >= 5 (group_by_length=True is 'group_by_length')
            kw["train_sampling_strategy"] = sampling
        elif sampling == "group_by_length":
            kw["group_by_length"] = True
        else:
            raise RuntimeError(f"this transformers version has no train_sampling_strategy={sampling!r}")
    return TrainingArguments(**kw)


def run_trainer(env: Env, features: list[dict], steps: int, seed: int, dynamic: bool, num_labels: int,
                sampling: str = "random") -> dict:
    """One Hugging Face Trainer run of `steps` steps over `features` (one pass), timed the same way.
    dynamic=False: run_glue defaults (features pre-padded to 128, default_data_collator).
    dynamic=True: DataCollatorWithPadding. sampling: 'random' (run_glue), 'sequential' (features
    in the given batch order) or 'group_by_length'. Optimizer: Adamax lr 2e-4 (passed in)."""
    import torch
    from transformers import (AutoModelForSequenceClassification, DataCollatorWithPadding, Trainer,
                              default_data_collator)

    torch.manual_seed(seed)
    model = AutoModelForSequenceClassification.from_pretrained(env.encoder, num_labels=num_labels)
    run_dir = Path(tempfile.mkdtemp(prefix="hf-run-", dir=env.work))
    tok = env.data.tokenizer()
    optimizer = torch.optim.Adamax(model.parameters(), lr=LR, weight_decay=0.0)
    trainer = Trainer(model=model, args=training_args(run_dir, steps, seed, sampling), train_dataset=features,
                      data_collator=DataCollatorWithPadding(tok) if dynamic else default_data_collator,
                      processing_class=tok, optimizers=(optimizer, None))
    try:
        with StepClock(model) as clock:
            trainer.train()
        return clock.result(expect_steps=steps)
    finally:
        shutil.rmtree(run_dir, ignore_errors=True)
        del trainer, model, optimizer
        gc.collect()
