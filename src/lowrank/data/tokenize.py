"""A WordPiece tokenizer trained locally with Hugging Face's ``tokenizers`` package.

Nothing is downloaded: :func:`train_tokenizer` learns the vocabulary from the texts it is
given (the training split only). Normalization: ``<br />`` (IMDB's line breaks) to a
space, Unicode NFD, lower case, accents stripped; pre-tokenization: BERT's (whitespace and
punctuation). Special tokens: ``[PAD]`` (id 0, what :func:`encode` pads with) and
``[UNK]`` (id 1); the other pieces are numbered in sorted order (the trainer's own order of
tied pieces varies between trainings). Training is still not always reproducible (ties at
the vocabulary's cut-off), which is one more reason a run keeps its tokenizer. :func:`encode` truncates every text to ``max_length`` tokens (its start)
and pads it to exactly that length; the padding mask is ``ids == PAD_ID``
(``key_padding_mask`` of the attention layers).

A tokenizer is saved as its JSON (``tokenizer.json``, the package's own format) with the
run and loaded again with :func:`load_tokenizer`, so evaluation and resumed runs see the
same ids.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from ..errors import ConfigError, CorruptFileError
from .config import MIN_VOCAB

__all__ = ["PAD_ID", "UNK_ID", "train_tokenizer", "encode", "padding_mask", "load_tokenizer", "tokenizer_from_json",
           "require_tokenizers", "normalized_words"]

PAD_ID = 0
"""Id of ``[PAD]``: the padding of every encoded text."""
UNK_ID = 1
"""Id of ``[UNK]``: a word piece outside the vocabulary."""
_SPECIALS = ["[PAD]", "[UNK]"]


def require_tokenizers() -> Any:
    """The ``tokenizers`` package, or a ConfigError saying how to install it."""
    try:
        import tokenizers
    except ImportError:
        raise ConfigError("text datasets need the tokenizers package: pip install -e \".[text]\" "
                          "(or pip install tokenizers)") from None
    return tokenizers


def _pipeline(tok: Any) -> None:
    from tokenizers import decoders, normalizers, pre_tokenizers

    tok.normalizer = normalizers.Sequence([normalizers.Replace("<br />", " "), normalizers.NFD(),
                                           normalizers.Lowercase(), normalizers.StripAccents()])
    tok.pre_tokenizer = pre_tokenizers.BertPreTokenizer()
    tok.decoder = decoders.WordPiece()


def train_tokenizer(texts: Sequence[str], vocab_size: int, *, min_frequency: int = 2) -> Any:
    """A ``tokenizers.Tokenizer`` (WordPiece) trained on ``texts``: at most ``vocab_size`` tokens,
    ``[PAD]`` = 0, ``[UNK]`` = 1; word pieces seen fewer than ``min_frequency`` times are left out."""
    require_tokenizers()
    from tokenizers import Tokenizer, models, trainers

    if isinstance(vocab_size, bool) or not isinstance(vocab_size, int) or vocab_size < MIN_VOCAB:
        raise ConfigError(f"vocab_size must be an integer >= {MIN_VOCAB}, got {vocab_size!r}")
    if not texts:
        raise ConfigError("a tokenizer needs at least one training text")
    tok = Tokenizer(models.WordPiece(unk_token="[UNK]"))
    _pipeline(tok)
    trainer = trainers.WordPieceTrainer(vocab_size=vocab_size, min_frequency=min_frequency,
                                        special_tokens=list(_SPECIALS), show_progress=False)
    tok.train_from_iterator(list(texts), trainer=trainer, length=len(texts))
    # The trainer numbers tied pieces differently from run to run (measured: 104 of 3,000 ids
    # differed between two trainings on the same 2,000 reviews, with the same pieces); number them
    # anew, specials first, then in sorted order. WordPiece matching never reads the ids. Ties at
    # the vocabulary's cut-off can still change the pieces themselves: a run keeps its tokenizer.
    vocab = tok.get_vocab()
    order = _SPECIALS + sorted(t for t in vocab if t not in _SPECIALS)
    final = Tokenizer(models.WordPiece(vocab={t: i for i, t in enumerate(order)}, unk_token="[UNK]"))
    _pipeline(final)
    _check_specials(final, "the trained tokenizer")
    return final


def _check_specials(tok: Any, where: str) -> None:
    if tok.token_to_id("[PAD]") != PAD_ID or tok.token_to_id("[UNK]") != UNK_ID:
        raise CorruptFileError(f"{where} does not have [PAD] = {PAD_ID} and [UNK] = {UNK_ID}; use a tokenizer "
                               f"lowrank trained (a run's tokenizer.json)")


def tokenizer_from_json(text: str, where: str = "tokenizer") -> Any:
    """A tokenizer from its JSON (``Tokenizer.to_str()``); a CorruptFileError if it is not one."""
    require_tokenizers()
    from tokenizers import Tokenizer

    try:
        tok = Tokenizer.from_str(text)
    except Exception as e:  # the package raises plain Exceptions for malformed JSON
        first = " ".join(str(e).split())[:120]
        raise CorruptFileError(f"{where} is not a tokenizers JSON file ({first}); use a run's tokenizer.json") from None
    _check_specials(tok, where)
    return tok


def load_tokenizer(path: str | Path) -> Any:
    """The tokenizer saved at ``path`` (a ``tokenizer.json``)."""
    p = Path(path)
    try:
        text = p.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise ConfigError(f"tokenizer file {p} does not exist; give a run's tokenizer.json") from None
    except (OSError, UnicodeDecodeError) as e:
        raise CorruptFileError(f"tokenizer file {p} cannot be read ({e})") from None
    return tokenizer_from_json(text, f"tokenizer file {p}")


def encode(tok: Any, texts: Sequence[str], max_length: int) -> np.ndarray:
    """``(N, max_length)`` int64 token ids: each text's first ``max_length`` tokens, padded with
    :data:`PAD_ID` (``tok`` is not changed)."""
    if isinstance(max_length, bool) or not isinstance(max_length, int) or max_length <= 0:
        raise ConfigError(f"max_length must be a positive integer, got {max_length!r}")
    from tokenizers import Tokenizer

    t = Tokenizer.from_str(tok.to_str())   # a copy: truncation and padding are settings of the object
    t.enable_truncation(max_length=max_length)
    t.enable_padding(pad_id=PAD_ID, pad_token="[PAD]", length=max_length)
    out = np.full((len(texts), max_length), PAD_ID, dtype=np.int64)
    for i, enc in enumerate(t.encode_batch(list(texts))):
        out[i] = enc.ids
    return out


def padding_mask(ids: Any) -> Any:
    """``key_padding_mask`` of a batch of ids: True where a position is padding."""
    return ids == PAD_ID


def normalized_words(tok: Any, text: str) -> list[str]:
    """The words of ``text`` as the tokenizer sees them (normalized and pre-tokenized), before word pieces."""
    return [w for w, _ in tok.pre_tokenizer.pre_tokenize_str(tok.normalizer.normalize_str(text))]
