"""From labelled texts to :class:`~lowrank.data.dataset.Splits` of token ids.

The split options mean what they mean for every dataset: the texts' row numbers go
through :func:`~lowrank.data.prepare.build_splits` (``train_size``, ``val_fraction``,
``test_size``, all seeded), then

1. the tokenizer is trained on the texts of the training split only (never the
   validation or test texts), or loaded from ``cfg.tokenizer`` (a run's
   ``tokenizer.json``: what a resumed run does);
2. every text becomes ``max_length`` token ids (its first tokens, padded with id 0),
   stored as float32 (exact below 2^24) in the splits' ``x``, so the loop, the
   checkpoints and the evaluation treat text like any other data; the models that
   read text (``transformer``) turn them back into ids and take padding (id 0) as the
   ``key_padding_mask``.

No normalization applies to ids. ``Splits.vocab_size`` is ``cfg.vocab_size`` (the
embedding's size: every id is below it); ``Splits.tokenizer`` holds the tokenizer's JSON,
which the run saves as ``tokenizer.json``.
"""

from __future__ import annotations

import dataclasses

import numpy as np
import torch

from ..errors import ConfigError
from .config import DataConfig
from .dataset import ArrayDataset, Splits
from .prepare import Prepared, build_splits
from .tokenize import encode, load_tokenizer, train_tokenizer

__all__ = ["text_splits", "MAX_TOKEN_ID"]

MAX_TOKEN_ID = 1 << 24
"""Token ids are stored as float32, exact below this."""


def text_splits(train_texts: list[str], train_labels: np.ndarray, test_texts: list[str], test_labels: np.ndarray,
                cfg: DataConfig, seed: int, *, name: str, classes: list[str], sources: list[str]) -> Splits:
    """Token-id splits of labelled texts (see the module docstring); labels are class indices."""
    rows = Prepared(np.arange(len(train_texts), dtype=np.float64)[:, None], np.asarray(train_labels, np.int64),
                    np.arange(len(test_texts), dtype=np.float64)[:, None], np.asarray(test_labels, np.int64),
                    name=name, num_classes=len(classes), classes=None, sample_shape=(1,), sources=sources)
    picked = build_splits(rows, dataclasses.replace(cfg, normalize=False), seed)

    def texts(ds: ArrayDataset, pool: list[str]) -> list[str]:
        return [pool[i] for i in ds.x[:, 0].to(torch.int64).tolist()]

    train = texts(picked.train, train_texts)
    tok = load_tokenizer(cfg.tokenizer) if cfg.tokenizer else train_tokenizer(train, cfg.vocab_size)

    def ids(ds: ArrayDataset, pool: list[str]) -> ArrayDataset:
        x = encode(tok, texts(ds, pool), cfg.max_length)
        return ArrayDataset(torch.from_numpy(x).to(torch.float32), ds.y)

    if tok.get_vocab_size() > cfg.vocab_size:
        raise ConfigError(f"tokenizer {cfg.tokenizer} has {tok.get_vocab_size()} tokens, more than vocab_size "
                          f"{cfg.vocab_size} (the embedding's size): give --vocab-size {tok.get_vocab_size()}")
    return Splits(train=ids(picked.train, train_texts), test=ids(picked.test, test_texts),
                  val=None if picked.val is None else ids(picked.val, train_texts), name=name,
                  num_classes=len(classes), input_dim=cfg.max_length, sources=list(sources),
                  sample_shape=(cfg.max_length,), classes=list(classes), input_scale=1.0,
                  vocab_size=cfg.vocab_size, tokenizer=tok.to_str())
