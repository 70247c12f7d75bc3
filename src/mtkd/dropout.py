"""Dropout that is cheap on CPU: the same regularisation, masks from 16-bit random numbers.

Why: PyTorch's dropout draws one random number per element and builds a float mask, a large share
of a CPU training step (measured in benchmarks/README.md, "Measurements behind the code"). Here one
64-bit draw gives four 16-bit numbers, each kept when it is at or above p * 65536, and the mask
stays boolean (`torch.where`); attention-probability dropout folds
its 1/(1-p) scale into the much smaller attention output. The drop rate is p rounded to 1/65536
and the scale is exact for that rate, so the expectation is unchanged. The masks come from
PyTorch's default generator: seeding, checkpointed RNG states and exact resume work as before.

Only CPU training changes: on other devices, in eval mode, or for anything unusual (causal or
grouped-query attention, position biases) the encoder runs PyTorch's own dropout and SDPA.
`use_fast_dropout(encoder)` applies it to a Hugging Face encoder (MTModel does this).

Families: every nn.Dropout module is swapped, whatever the family, and keeps its rate. The
attention twin needs an encoder on transformers' SDPA that dispatches through AttentionInterface
(BERT, RoBERTa, DistilBERT, ELECTRA since transformers 5.0, ModernBERT since 5.7); any other
encoder (DeBERTa-v2's own disentangled attention, eager attention, older releases) keeps its
attention as is and gets the cheap masks only where dropout is a module (DeBERTa-v2's attention
dropout is one). On transformers 4.x, which lacks some of these APIs, the import still works and
only the module swap applies.
"""

from __future__ import annotations

import torch
from torch import nn

ATTENTION_NAME = "mtkd_sdpa"
_LEVELS = 65536


def _drop_level(p: float) -> int:
    return min(_LEVELS, max(0, round(p * _LEVELS)))


def keep_mask(shape: torch.Size | tuple[int, ...], p: float, device=None) -> torch.Tensor:
    """Boolean mask, True with probability 1 - round(p * 65536) / 65536, from the default generator."""
    n = 1
    for s in shape:
        n *= int(s)
    words = torch.empty((n + 3) // 4, dtype=torch.int64, device=device).random_(-(2**63), None)  # all 64 bits
    return words.view(torch.int16)[:n].view(shape) >= (_drop_level(p) - _LEVELS // 2)


def keep_scale(p: float) -> float:
    """1 / (1 - effective p): keeps the expectation exact for the rounded rate."""
    return _LEVELS / (_LEVELS - _drop_level(p))


def fast_dropout(x: torch.Tensor, p: float) -> torch.Tensor:
    """Training-mode dropout of x (any shape) with a 16-bit mask."""
    return torch.where(keep_mask(x.shape, p, x.device), x, 0.0).mul_(keep_scale(p))


class FastDropout(nn.Dropout):
    """nn.Dropout with the cheap CPU mask; identical to nn.Dropout elsewhere."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if not self.training or not 0.0 < self.p < 1.0 or x.device.type != "cpu" or self.inplace:
            return super().forward(x)
        return fast_dropout(x, self.p)


def attention_with_fast_dropout(
    module,
    query,
    key,
    value,
    attention_mask,
    dropout: float = 0.0,
    scaling: float | None = None,
    is_causal: bool | None = None,
    **kwargs,
):
    """A Hugging Face attention function (AttentionInterface): softmax(q k^T * scale + mask) with the
    cheap dropout, then @ v. Delegates to transformers' SDPA function whenever it would differ."""
    from transformers.integrations.sdpa_attention import sdpa_attention_forward

    causal = is_causal if is_causal is not None else getattr(module, "is_causal", False)
    if (
        not module.training
        or not 0.0 < dropout < 1.0
        or query.device.type != "cpu"
        or causal
        or getattr(module, "num_key_value_groups", 1) > 1
        or key.shape[1] != query.shape[1]
        or kwargs.get("position_bias") is not None
        or kwargs.get("softcap") is not None
    ):
        return sdpa_attention_forward(
            module, query, key, value, attention_mask, dropout=dropout, scaling=scaling, is_causal=is_causal, **kwargs
        )
    scale = scaling if scaling is not None else query.shape[-1] ** -0.5
    scores = torch.matmul(query, key.transpose(-1, -2)).mul_(scale)
    if attention_mask is not None:
        if attention_mask.dtype == torch.bool:  # SDPA's mask: True = attend
            scores = scores.masked_fill_(~attention_mask, torch.finfo(scores.dtype).min)
        else:  # additive
            scores = scores + attention_mask
    probs = torch.where(keep_mask(scores.shape, dropout), scores.softmax(-1), 0.0)
    out = torch.matmul(probs, value).mul_(keep_scale(dropout))  # the 1/(1-p) scale on the small tensor
    return out.transpose(1, 2).contiguous(), None


def _register() -> bool:
    """Register the twin with transformers; False where this transformers lacks the interfaces
    (AttentionInterface, masking_utils, integrations.sdpa_attention: before 4.53)."""
    try:
        from transformers import AttentionInterface
        from transformers.integrations.sdpa_attention import sdpa_attention_forward  # noqa: F401 (the delegate)
        from transformers.masking_utils import ALL_MASK_ATTENTION_FUNCTIONS, AttentionMaskInterface
    except ImportError:
        return False
    if ATTENTION_NAME not in ALL_MASK_ATTENTION_FUNCTIONS:
        AttentionInterface.register(ATTENTION_NAME, attention_with_fast_dropout)
        AttentionMaskInterface.register(ATTENTION_NAME, ALL_MASK_ATTENTION_FUNCTIONS["sdpa"])  # same masks as SDPA
    return True


def _twin_applies(encoder: nn.Module) -> bool:
    """An encoder on SDPA whose attention goes through AttentionInterface and can be switched."""
    config = getattr(encoder, "config", None)
    if config is None or getattr(config, "_attn_implementation", None) != "sdpa":
        return False
    if not getattr(encoder, "_supports_attention_backend", False) or not hasattr(encoder, "set_attn_implementation"):
        return False
    can_set = getattr(encoder, "_can_set_attn_implementation", None)
    return can_set() if callable(can_set) else True


def use_fast_dropout(encoder: nn.Module) -> nn.Module:
    """In place: every nn.Dropout of the encoder becomes a FastDropout (same p), and an encoder on
    transformers' SDPA attention switches to its fast-dropout twin where it dispatches through
    AttentionInterface (others keep PyTorch's attention). Weights and eval outputs are unchanged."""
    for parent in encoder.modules():
        for name, child in list(parent.named_children()):
            if type(child) is nn.Dropout:
                setattr(parent, name, FastDropout(child.p, child.inplace))
    if _twin_applies(encoder) and _register():
        encoder.set_attn_implementation(ATTENTION_NAME)
    return encoder
