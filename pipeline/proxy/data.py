"""Proxy training data: kept documents from `datamixer score`, tokenized, split and sampled.

Every domain's documents are ordered by a seeded hash of their id and the first ones (up to
`val_tokens` tokens) form its validation split, so the split depends only on the documents and
`split_seed`, never on file order, the mixture or the training seed: every run of a sweep is
evaluated on the same tokens. Training samples whole windows of `context` tokens from the
remaining documents of each domain (packed: documents joined by the end-of-text token).
"""

from __future__ import annotations

import hashlib
import os
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pandas as pd
import pyarrow.parquet as pq

from pipeline import schema

TOKENIZER_FILE = "tokenizer.json"
EOS_CANDIDATES = ("<|endoftext|>", "</s>", "<eos>", "[EOS]", "<|end|>", "[SEP]")
PROXY_VOCAB_SIZE = 1024
DEFAULT_VAL_TOKENS = 8192


@dataclass
class ProxyData:
    """Token streams per domain: `train` to sample from, `valid` the held-out split."""

    domains: tuple[str, ...]
    train: dict[str, np.ndarray]
    valid: dict[str, np.ndarray]
    tokenizer_json: str
    eos_token: str | None
    vocab_size: int
    docs: dict[str, tuple[int, int]] = field(default_factory=dict)  # domain -> (train, valid) docs
    tokenizer_source: str = ""  # the file it was read from, or "trained"

    def summary(self) -> dict[str, dict[str, int]]:
        """Documents and tokens per domain and split."""
        return {
            d: {
                "train_docs": self.docs.get(d, (0, 0))[0],
                "valid_docs": self.docs.get(d, (0, 0))[1],
                "train_tokens": int(self.train[d].size),
                "valid_tokens": int(self.valid[d].size),
            }
            for d in self.domains
        }


def scored_files(score_dir: str | os.PathLike[str]) -> list[Path]:
    """The `scored-*.parquet` shards of a score output directory, sorted by name."""
    root = Path(score_dir)
    if not root.is_dir():
        raise FileNotFoundError(f"{root}: no such score output directory")
    files = sorted(root.glob(f"{schema.SCORED_PREFIX}-*.parquet"))
    if not files:
        raise FileNotFoundError(f"{root}: no {schema.SCORED_PREFIX}-*.parquet files (run `datamixer score`)")
    return files


def read_kept(score_dir: str | os.PathLike[str]) -> pd.DataFrame:
    """Kept documents (`id`, `domain`, `text`) of every scored shard."""
    frames = []
    for path in scored_files(score_dir):
        names = pq.read_schema(path).names
        missing = [c for c in (schema.DOMAIN, schema.TEXT, schema.KEEP) if c not in names]
        if missing:
            raise ValueError(f"{path}: missing column(s) {missing} (columns: {names})")
        columns = [c for c in (schema.ID, schema.DOMAIN, schema.TEXT, schema.KEEP) if c in names]
        frame = pq.read_table(path, columns=columns).to_pandas()
        if schema.ID not in frame.columns:
            frame[schema.ID] = [f"{path.name}:{i}" for i in range(len(frame))]
        frames.append(frame[frame[schema.KEEP].fillna(False).astype(bool)])
    kept = pd.concat(frames, ignore_index=True)
    kept = kept[kept[schema.TEXT].notna() & (kept[schema.TEXT].str.len() > 0)]
    if kept.empty:
        raise ValueError(f"{score_dir}: no kept documents with text")
    return kept[[schema.ID, schema.DOMAIN, schema.TEXT]].reset_index(drop=True)


def train_tokenizer(texts: Sequence[str], vocab_size: int = PROXY_VOCAB_SIZE) -> str:
    """A byte-level BPE tokenizer trained on `texts`, as JSON, with `<|endoftext|>` special."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers

    tokenizer = Tokenizer(models.BPE())
    tokenizer.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tokenizer.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size,
        special_tokens=["<|endoftext|>"],
        show_progress=False,
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
    )
    tokenizer.train_from_iterator(texts, trainer=trainer, length=len(texts))
    return tokenizer.to_str()


def resolve_tokenizer(
    score_dir: str | os.PathLike[str],
    tokenizer: str | os.PathLike[str] | None,
    texts: Sequence[str],
    vocab_size: int | None = None,
) -> tuple[str, str]:
    """(tokenizer JSON, source): `tokenizer` if given; else, with `vocab_size`, a byte-level BPE of
    that size trained on `texts` (source "trained"); else the score job's
    `<score_dir>/tokenizer.json`; else a trained one of PROXY_VOCAB_SIZE."""
    if tokenizer is not None and vocab_size is not None:
        raise ValueError("give a tokenizer file or a vocabulary size to train one, not both")
    if vocab_size is not None:
        return train_tokenizer(texts, vocab_size), "trained"
    if tokenizer is not None:
        path = Path(tokenizer)
        if path.is_dir():
            path = path / TOKENIZER_FILE
        if not path.exists():
            raise FileNotFoundError(f"{path}: no such tokenizer file")
        return path.read_text(), str(path)
    default = Path(score_dir) / TOKENIZER_FILE
    if default.exists():
        return default.read_text(), str(default)
    return train_tokenizer(texts, PROXY_VOCAB_SIZE), "trained"


def find_eos(tokenizer_json: str) -> str | None:
    """The tokenizer's end-of-text token (documents are joined by it), if it has one."""
    from tokenizers import Tokenizer

    added = Tokenizer.from_str(tokenizer_json).get_added_tokens_decoder()
    specials = [t.content for _, t in sorted(added.items()) if t.special]
    for name in EOS_CANDIDATES:
        if name in specials:
            return name
    return specials[0] if specials else None


def _doc_order(ids: Sequence[str], split_seed: int) -> np.ndarray:
    keys = [hashlib.blake2b(f"{split_seed}\x00{i}".encode(), digest_size=8).digest() for i in ids]
    return np.array(sorted(range(len(ids)), key=keys.__getitem__), dtype=np.int64)


def _join(docs: Sequence[list[int]], eos_id: int | None) -> np.ndarray:
    parts: list[np.ndarray] = []
    for ids in docs:
        parts.append(np.asarray(ids, dtype=np.int32))
        if eos_id is not None:
            parts.append(np.array([eos_id], dtype=np.int32))
    return np.concatenate(parts) if parts else np.zeros(0, dtype=np.int32)


def split_domain(
    token_ids: Sequence[list[int]],
    doc_ids: Sequence[str],
    val_tokens: int,
    split_seed: int,
    eos_id: int | None,
) -> tuple[np.ndarray, np.ndarray, int]:
    """(train stream, validation stream, validation docs) of one domain.

    Validation takes documents in seeded-hash order until it holds `val_tokens` tokens, at least
    one document and at most half of the domain's tokens; its stream is cut to `val_tokens`.
    """
    if len(token_ids) < 2:
        raise ValueError("needs at least 2 kept documents (one to train on, one to validate)")
    order = _doc_order(doc_ids, split_seed)
    lengths = np.array([len(token_ids[i]) + (eos_id is not None) for i in order])
    total = int(lengths.sum())
    taken, n_val = 0, 0
    while n_val < len(order) - 1 and taken < val_tokens:
        if n_val >= 1 and taken + lengths[n_val] > total / 2:
            break
        taken += int(lengths[n_val])
        n_val += 1
    valid = _join([token_ids[i] for i in order[:n_val]], eos_id)[:val_tokens]
    train = _join([token_ids[i] for i in sorted(order[n_val:])], eos_id)
    return train, valid, n_val


def load_proxy_data(
    score_dir: str | os.PathLike[str],
    tokenizer: str | os.PathLike[str] | None = None,
    val_tokens: int = DEFAULT_VAL_TOKENS,
    split_seed: int = 0,
    vocab_size: int | None = None,
) -> ProxyData:
    """Read the kept documents of a score output, tokenize them and split every domain.

    The tokenizer is `tokenizer`, or (with `vocab_size`) one trained here, or the score job's, or
    one trained here with PROXY_VOCAB_SIZE. The output head dominates these models' cost, so a
    small vocabulary (~1k) trains several times faster than the score job's default.
    """
    from tokenizers import Tokenizer

    kept = read_kept(score_dir)
    texts = kept[schema.TEXT].tolist()
    tokenizer_json, tokenizer_source = resolve_tokenizer(score_dir, tokenizer, texts, vocab_size)
    tok = Tokenizer.from_str(tokenizer_json)
    eos_token = find_eos(tokenizer_json)
    eos_id = tok.token_to_id(eos_token) if eos_token is not None else None
    encoded = [e.ids for e in tok.encode_batch_fast(texts, add_special_tokens=False)]
    train: dict[str, np.ndarray] = {}
    valid: dict[str, np.ndarray] = {}
    docs: dict[str, tuple[int, int]] = {}
    for domain, rows in kept.groupby(schema.DOMAIN, sort=True).indices.items():
        try:
            train[domain], valid[domain], n_val = split_domain(
                [encoded[i] for i in rows],
                kept[schema.ID].iloc[rows].astype(str).tolist(),
                val_tokens,
                split_seed,
                eos_id,
            )
        except ValueError as exc:
            raise ValueError(f"{score_dir}: domain {domain!r}: {exc}") from None
        docs[domain] = (len(rows) - n_val, n_val)
    return ProxyData(
        domains=tuple(sorted(train)),
        train=train,
        valid=valid,
        tokenizer_json=tokenizer_json,
        eos_token=eos_token,
        vocab_size=tok.get_vocab_size(with_added_tokens=True),
        docs=docs,
        tokenizer_source=tokenizer_source,
    )


def full_weights(data: ProxyData, weights: Mapping[str, float]) -> dict[str, float]:
    """The mixture over every data domain (absent domains get 0); error on unknown domains."""
    unknown = sorted(set(weights) - set(data.domains))
    if unknown:
        raise ValueError(f"mixture domain(s) {unknown} not in the data (domains: {list(data.domains)})")
    out = {d: float(weights.get(d, 0.0)) for d in data.domains}
    total = sum(out.values())
    if not total > 0:
        raise ValueError("mixture weights sum to 0")
    return {d: w / total for d, w in out.items()}


class MixtureSampler:
    """Windows of `context` tokens; domains drawn in exact proportion to the weights.

    Sequence i goes to the domain furthest below its quota (weight x (i + 1)), so every prefix
    of the stream matches the mixture to within one sequence per domain; the window's position
    in that domain's training stream is drawn uniformly with the seeded generator.
    """

    def __init__(
        self, streams: Mapping[str, np.ndarray], weights: Mapping[str, float], context: int, seed: int = 0
    ) -> None:
        self.domains = [d for d in sorted(weights) if weights[d] > 0]
        self.weights = np.array([weights[d] for d in self.domains], dtype=float)
        self.weights /= self.weights.sum()
        self.streams = [streams[d] for d in self.domains]
        for domain, stream in zip(self.domains, self.streams, strict=True):
            if stream.size < context + 1:
                raise ValueError(
                    f"domain {domain!r}: {stream.size} training tokens, fewer than one "
                    f"window of {context + 1}; lower the context or give it weight 0"
                )
        self.context = context
        self.counts = np.zeros(len(self.domains), dtype=np.int64)
        self.rng = np.random.default_rng(seed)

    def batch(self, size: int) -> np.ndarray:
        """The next `size` windows, shape (size, context), int64."""
        out = np.empty((size, self.context), dtype=np.int64)
        for row in range(size):
            quota = self.weights * (self.counts.sum() + 1) - self.counts
            d = int(np.argmax(quota))
            self.counts[d] += 1
            stream = self.streams[d]
            start = int(self.rng.integers(0, stream.size - self.context + 1))
            out[row] = stream[start : start + self.context]
        return out


def eval_windows(stream: np.ndarray, context: int) -> np.ndarray:
    """Non-overlapping windows of a validation stream, shape (n, context) (one shorter if tiny)."""
    n = stream.size // context
    if n == 0:
        return stream[None, :].astype(np.int64)
    return stream[: n * context].reshape(n, context).astype(np.int64)
