"""Helpers for tests and benchmark smoke runs, no network: a tiny BERT with the bundled tokenizer
(save_tiny_encoder), and a tiny random encoder of each supported family with a small tokenizer
trained on the spot in that family's style (save_tiny_family_encoder, FAMILIES)."""

from __future__ import annotations

from pathlib import Path


def save_tiny_encoder(folder: Path, max_positions: int = 512) -> Path:
    """Save a 2-layer, hidden-64 BERT with random weights (seed 0) and the default encoder's
    tokenizer as a Hugging Face folder: real tokenisation (tokenised caches are shared with the
    default encoder), a model small enough to train in milliseconds."""
    import torch
    from transformers import AutoTokenizer, BertConfig, BertModel

    from mtkd.encoders import resolve_encoder

    tok = AutoTokenizer.from_pretrained(resolve_encoder("default"), use_fast=True)
    torch.manual_seed(0)
    cfg = BertConfig(vocab_size=tok.vocab_size, hidden_size=64, num_hidden_layers=2, num_attention_heads=2,
                     intermediate_size=128, max_position_embeddings=max_positions)
    BertModel(cfg, add_pooling_layer=False).save_pretrained(folder)
    tok.save_pretrained(folder)
    return Path(folder)


# ------------------------------------------------------------------------- tiny encoder families
FAMILIES = ("bert", "roberta", "distilbert", "electra", "deberta-v2", "modernbert")

# Enough text for the tiny tokenizers to learn the GLUE fixture's words (tests/conftest.py) and
# every letter and digit, so any English text tokenises without unknown tokens.
_CORPUS = [
    "the film movie plot cast story show was good great fine lovely superb bad awful poor dull terrible .",
    "he said the cat sat . a man plays a flute . a man plays music . premise hypothesis question sentence",
    "is it not a gripping funny film ? dull and overlong , yes no maybe ! the quick brown fox jumps .",
    "abcdefghijklmnopqrstuvwxyz ABCDEFGHIJKLMNOPQRSTUVWXYZ 0123456789 \" ' ( ) - : ; # / %",
] * 4


def _wordpiece(vocab_size: int):
    """BERT's tokenizer pipeline (lower-casing normaliser, WordPiece), specials [PAD]=0 ... [MASK]=4."""
    from tokenizers import Tokenizer, decoders, models, normalizers, pre_tokenizers, trainers

    tok = Tokenizer(models.WordPiece(unk_token="[UNK]"))
    tok.normalizer = normalizers.BertNormalizer(lowercase=True)
    tok.pre_tokenizer = pre_tokenizers.BertPreTokenizer()
    tok.decoder = decoders.WordPiece()
    tok.train_from_iterator(_CORPUS, trainers.WordPieceTrainer(
        vocab_size=vocab_size, special_tokens=["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]"]))
    return tok


def _bert_template(tok, cls="[CLS]", sep="[SEP]", pair_type=1):
    from tokenizers import processors

    tok.post_processor = processors.TemplateProcessing(
        single=f"{cls} $A {sep}", pair=f"{cls} $A {sep} $B:{pair_type} {sep}:{pair_type}",
        special_tokens=[(cls, tok.token_to_id(cls)), (sep, tok.token_to_id(sep))])
    return tok


def _byte_bpe(vocab_size: int, special_tokens: list[str]):
    """GPT-2/RoBERTa's byte-level BPE; `special_tokens` get the first ids."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers

    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    tok.train_from_iterator(_CORPUS, trainers.BpeTrainer(
        vocab_size=vocab_size, special_tokens=special_tokens, initial_alphabet=pre_tokenizers.ByteLevel.alphabet()))
    return tok


def _unigram(vocab_size: int):
    """A sentencepiece-like Unigram model (Metaspace '▁' word boundaries) as DeBERTa-v2/v3 use,
    specials [PAD]=0, [CLS]=1, [SEP]=2, [UNK]=3, [MASK]=4 like deberta-v3."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers

    tok = Tokenizer(models.Unigram())
    tok.pre_tokenizer = pre_tokenizers.Metaspace()
    tok.decoder = decoders.Metaspace()
    tok.train_from_iterator(_CORPUS, trainers.UnigramTrainer(
        vocab_size=vocab_size, special_tokens=["[PAD]", "[CLS]", "[SEP]", "[UNK]", "[MASK]"], unk_token="[UNK]"))
    return tok


def tiny_tokenizer(family: str, max_len: int = 128):
    """A small trained fast tokenizer with `family`'s pipeline and special tokens, as a
    PreTrainedTokenizerFast: WordPiece for BERT/DistilBERT/ELECTRA, byte-level BPE with <s> <pad>
    </s> (pad id 1) for RoBERTa, Unigram with [PAD]=0 [CLS]=1 [SEP]=2 for DeBERTa-v2, byte-level
    BPE with the specials after the vocabulary (pad id far from 0) for ModernBERT."""
    from tokenizers import processors
    from transformers import PreTrainedTokenizerFast

    bert_specials = dict(unk_token="[UNK]", sep_token="[SEP]", pad_token="[PAD]", cls_token="[CLS]", mask_token="[MASK]")
    if family in ("bert", "distilbert", "electra"):
        tok, specials = _bert_template(_wordpiece(300)), bert_specials
    elif family == "roberta":
        tok = _byte_bpe(400, ["<s>", "<pad>", "</s>", "<unk>", "<mask>"])
        tok.post_processor = processors.RobertaProcessing(("</s>", 2), ("<s>", 0), add_prefix_space=False)
        specials = dict(bos_token="<s>", eos_token="</s>", unk_token="<unk>", sep_token="</s>", pad_token="<pad>",
                        cls_token="<s>", mask_token="<mask>")
    elif family == "deberta-v2":
        tok, specials = _bert_template(_unigram(200)), {**bert_specials, "bos_token": "[CLS]", "eos_token": "[SEP]"}
    elif family == "modernbert":
        from tokenizers import AddedToken

        tok = _byte_bpe(400, ["<|endoftext|>"])
        tok.add_special_tokens([AddedToken(t, special=True) for t in ("[UNK]", "[CLS]", "[SEP]", "[PAD]", "[MASK]")])
        tok = _bert_template(tok, pair_type=0)  # ModernBERT has no token types
        specials = bert_specials
    else:
        raise ValueError(f"unknown family {family!r}; tiny builders exist for {FAMILIES}")
    inputs = ["input_ids", "token_type_ids", "attention_mask"] if family in ("bert", "electra") else \
        ["input_ids", "attention_mask"]  # what the family's own tokenizer returns
    return PreTrainedTokenizerFast(tokenizer_object=tok, model_max_length=max_len, model_input_names=inputs, **specials)


def tiny_encoder_config(family: str, tokenizer, max_len: int = 128, hidden: int = 32, layers: int = 2):
    """A hidden-32, 2-layer config of `family` whose vocabulary and special ids match `tokenizer`."""
    from transformers import AutoConfig

    ids = dict(vocab_size=len(tokenizer), pad_token_id=tokenizer.pad_token_id)
    if family == "distilbert":
        return AutoConfig.for_model("distilbert", dim=hidden, hidden_dim=2 * hidden, n_layers=layers, n_heads=2,
                                    max_position_embeddings=max_len, **ids)
    common = dict(hidden_size=hidden, intermediate_size=2 * hidden, num_hidden_layers=layers, num_attention_heads=2, **ids)
    if family == "modernbert":
        # local_attention 8: layer 1 (sliding window) sees +-4 tokens, so fixture sentences exceed the window
        return AutoConfig.for_model("modernbert", max_position_embeddings=max_len, global_attn_every_n_layers=2,
                                    local_attention=8, cls_token_id=tokenizer.cls_token_id, sep_token_id=tokenizer.sep_token_id,
                                    bos_token_id=tokenizer.cls_token_id, eos_token_id=tokenizer.sep_token_id, **common)
    if family == "roberta":  # positions start after the padding index
        return AutoConfig.for_model("roberta", max_position_embeddings=max_len + 2, type_vocab_size=1,
                                    bos_token_id=0, eos_token_id=2, **common)
    if family == "electra":
        return AutoConfig.for_model("electra", embedding_size=hidden, max_position_embeddings=max_len, **common)
    if family == "deberta-v2":  # deberta-v3-like: relative attention, no absolute positions, no token types
        return AutoConfig.for_model("deberta-v2", max_position_embeddings=max_len, relative_attention=True,
                                    position_buckets=16, max_relative_positions=-1, pos_att_type=["p2c", "c2p"],
                                    position_biased_input=False, type_vocab_size=0, norm_rel_ebd="layer_norm", **common)
    return AutoConfig.for_model(family, max_position_embeddings=max_len, **common)


def save_tiny_family_encoder(folder: Path, family: str, max_len: int = 128, seed: int = 0) -> Path:
    """Save a random-init hidden-32, 2-layer encoder of `family` (one of FAMILIES) with its own tiny
    tokenizer as a Hugging Face folder (config.json, model.safetensors, tokenizer files)."""
    import torch
    from transformers import AutoModel

    tok = tiny_tokenizer(family, max_len)
    cfg = tiny_encoder_config(family, tok, max_len)
    torch.manual_seed(seed)
    try:
        model = AutoModel.from_config(cfg, add_pooling_layer=False)  # MTModel drops the pooler too
    except TypeError:
        model = AutoModel.from_config(cfg)
    model.save_pretrained(folder)
    tok.save_pretrained(folder)
    return Path(folder)
