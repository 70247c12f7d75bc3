"""mtkd.dropout: the cheap CPU dropout keeps dropout's statistics, its gradients, the attention
mask, and leaves eval outputs and other devices' paths exactly as PyTorch's."""

import copy

import pytest
import torch
from transformers import BertConfig, BertModel

from mtkd.dropout import (
    ATTENTION_NAME,
    FastDropout,
    attention_with_fast_dropout,
    fast_dropout,
    keep_mask,
    keep_scale,
    use_fast_dropout,
)


@pytest.mark.parametrize("p", [0.05, 0.1, 0.3])
def test_keep_rate_and_expectation(p):
    torch.manual_seed(0)
    keep = keep_mask((1000, 1003), p)  # odd size: the last 64-bit word is partly used
    assert keep.dtype == torch.bool and keep.shape == (1000, 1003)
    assert abs(keep.float().mean().item() - (1 - p)) < 0.002
    assert keep_scale(p) == pytest.approx(1 / (1 - p), rel=1e-4)
    x = torch.full((2_000_000,), 3.0)
    y = fast_dropout(x, p)
    values = torch.unique(y).tolist()
    assert len(values) == 2 and values[0] == 0.0 and values[1] == pytest.approx(3.0 * keep_scale(p))
    assert y.mean().item() == pytest.approx(3.0, rel=0.003)  # unbiased


def test_masks_follow_the_seed_and_differ_between_calls():
    torch.manual_seed(7)
    a, b = keep_mask((64, 64), 0.1), keep_mask((64, 64), 0.1)
    torch.manual_seed(7)
    assert torch.equal(keep_mask((64, 64), 0.1), a) and not torch.equal(a, b)


def test_gradient_is_the_mask_times_the_scale():
    torch.manual_seed(1)
    x = torch.randn(8, 16, requires_grad=True)
    drop = FastDropout(0.25).train()
    y = drop(x)
    y.sum().backward()
    kept = y != 0
    assert torch.allclose(x.grad[kept], torch.full_like(x.grad[kept], keep_scale(0.25)))
    assert torch.all(x.grad[~kept] == 0) and 0 < kept.sum() < x.numel()
    drop.eval()
    assert torch.equal(drop(x), x)  # eval: identity
    assert torch.equal(FastDropout(0.0).train()(x), x)


def test_attention_function_matches_the_formula_with_the_same_mask():
    torch.manual_seed(0)
    q, k, v = (torch.randn(2, 3, 5, 4) for _ in range(3))
    pad = torch.ones(2, 1, 5, 5, dtype=torch.bool)
    pad[0, :, :, 3:] = False  # first example: keys 3 and 4 are padding
    module = torch.nn.Module().train()
    torch.manual_seed(11)
    out, weights = attention_with_fast_dropout(module, q, k, v, pad, dropout=0.2, scaling=0.5)
    torch.manual_seed(11)
    scores = (q @ k.transpose(-1, -2) * 0.5).masked_fill(~pad, float("-inf"))
    expected = (torch.where(keep_mask(scores.shape, 0.2), scores.softmax(-1), 0.0) @ v) * keep_scale(0.2)
    assert weights is None and out.shape == (2, 5, 3, 4)  # (B, Q, H, d) like transformers' SDPA
    assert torch.allclose(out, expected.transpose(1, 2), atol=1e-6)
    module.eval()  # eval (transformers then passes dropout=0): plain SDPA
    ref = torch.nn.functional.scaled_dot_product_attention(q, k, v, attn_mask=pad, scale=0.5).transpose(1, 2)
    assert torch.allclose(
        attention_with_fast_dropout(module, q, k, v, pad, dropout=0.0, scaling=0.5)[0], ref, atol=1e-6
    )


def _tiny_bert():
    torch.manual_seed(0)
    cfg = BertConfig(vocab_size=100, hidden_size=32, num_hidden_layers=2, num_attention_heads=4, intermediate_size=64)
    return BertModel(cfg, add_pooling_layer=False)


def test_encoder_switch_keeps_eval_outputs_and_the_padding_mask_in_training():
    plain = _tiny_bert()
    fast = use_fast_dropout(copy.deepcopy(plain))
    assert fast.config._attn_implementation == ATTENTION_NAME
    assert not any(type(m) is torch.nn.Dropout for m in fast.modules())
    assert sum(isinstance(m, FastDropout) for m in fast.modules()) == 7  # embeddings + 3 per layer
    ids = torch.randint(5, 100, (3, 9))
    mask = torch.ones_like(ids)
    mask[0, 5:] = 0
    plain.eval(), fast.eval()
    assert torch.equal(
        plain(input_ids=ids, attention_mask=mask).last_hidden_state,
        fast(input_ids=ids, attention_mask=mask).last_hidden_state,
    )
    # training: what sits in padded positions must not reach the real tokens
    fast.train()
    other = ids.clone()
    other[0, 5:] = 1
    torch.manual_seed(3)
    a = fast(input_ids=ids, attention_mask=mask).last_hidden_state
    torch.manual_seed(3)
    b = fast(input_ids=other, attention_mask=mask).last_hidden_state
    assert torch.allclose(a[0, :5], b[0, :5], atol=1e-6) and torch.allclose(a[1:], b[1:], atol=1e-6)
    torch.manual_seed(4)
    assert not torch.allclose(fast(input_ids=ids, attention_mask=mask).last_hidden_state, a)  # dropout is on
    a.sum().backward()
    assert all(torch.isfinite(p.grad).all() for p in fast.parameters() if p.grad is not None)


def test_eager_encoders_keep_their_attention():
    model = _tiny_bert()
    model.set_attn_implementation("eager")
    use_fast_dropout(model)
    assert model.config._attn_implementation == "eager"
