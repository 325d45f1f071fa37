"""AttentionInfluence (Hua et al. 2025, arXiv:2505.07293): score documents by how much a small LM's loss
rises when its retrieval heads attend uniformly instead of where they learned to.

1. `retrieval_head_scores`: per-head retrieval score of Wu et al. 2024 (arXiv:2404.15574) on synthetic
   JSON key-value probes (`build_probes`), teacher-forced on the gold value.
2. `uniform_heads`: the chosen heads' attention becomes uniform over the visible causal prefix
   (position i attends 1/(i+1) to each of 0..i), inside the model's attention function, so one loaded
   model serves both passes.
3. `AttentionInfluenceScorer`: score = (L_masked - L_base) / L_base per document; layers below the first
   masked layer run once and are replayed in the masked pass.
"""

from __future__ import annotations

import ast
import contextlib
import json
import os
import random
import re
import string
import sysconfig
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

from scorers import lm

ATTN_IMPLEMENTATION = "datamixer_uniform_sdpa"
DEFAULT_TOP_FRACTION = 0.05
DEFAULT_PROBES = 800
DEFAULT_PROBE_TOKENS = 2048
MAX_VALUE_TOKENS = 30
KEY_CHARS = 32
N_SHOTS = 3
SCORE_METHOD = ("Wu et al. 2024 retrieval score, teacher-forced on the gold value: the fraction of answer "
                "tokens for which the head's argmax attention, at the position predicting the token, lands "
                "on the needle (the gold value inside the JSON context) at a position holding that token")

Head = tuple[int, int]

_UNIFORM_ATTR = "_datamixer_uniform_heads"
_RECORD_ATTR = "_datamixer_record"


# --- the attention function -------------------------------------------------------------------

def uniform_prefix_average(value: torch.Tensor, attention_mask: torch.Tensor | None) -> torch.Tensor:
    """Attention output of heads that attend uniformly over what they may see: [B, h, T, D] in float32.

    Without a mask, position i averages values 0..i (a cumulative mean). With a mask (bool: True =
    visible, or additive float), each query averages exactly its visible keys.
    """
    value = value.float()
    if attention_mask is None:
        counts = torch.arange(1, value.shape[2] + 1, device=value.device, dtype=torch.float32)
        return value.cumsum(dim=2) / counts[:, None]
    if attention_mask.dtype == torch.bool:
        visible = attention_mask.float()
    else:
        visible = (attention_mask > torch.finfo(attention_mask.dtype).min / 2).float()
    weights = visible / visible.sum(dim=-1, keepdim=True).clamp_min(1.0)
    return weights[..., : value.shape[2]] @ value


def _argmax_keys(query: torch.Tensor, key: torch.Tensor, positions: torch.Tensor) -> torch.Tensor:
    """Per head, the causal argmax key of the queries at `positions` [B, A]: returns [B, H, A]."""
    n_rep = query.shape[1] // key.shape[1]
    index = positions[:, None, :, None].expand(-1, query.shape[1], -1, query.shape[3])
    q = query.gather(2, index).float()
    k = key.float().repeat_interleave(n_rep, dim=1) if n_rep > 1 else key.float()
    logits = q @ k.transpose(2, 3)
    future = torch.arange(k.shape[2], device=k.device)[None, None, None, :] > positions[:, None, :, None]
    return logits.masked_fill(future, float("-inf")).argmax(dim=-1)


def datamixer_attention(module: torch.nn.Module, query: torch.Tensor, key: torch.Tensor, value: torch.Tensor,
                        attention_mask: torch.Tensor | None, **kwargs: Any) -> tuple[torch.Tensor, Any]:
    """PyTorch SDPA attention, plus uniform-prefix heads and argmax recording when a context asks for them."""
    from transformers.integrations.sdpa_attention import sdpa_attention_forward

    output, weights = sdpa_attention_forward(module, query, key, value, attention_mask, **kwargs)
    masking = getattr(module, _UNIFORM_ATTR, None)
    if masking:
        heads, right_padded = masking
        n_rep = query.shape[1] // value.shape[1]
        kv_heads = [h // n_rep for h in heads]
        # With right padding, every real query sees exactly positions 0..i: the cumulative mean is exact.
        uniform = uniform_prefix_average(value[:, kv_heads], None if right_padded else attention_mask)
        output[:, :, heads] = uniform.transpose(1, 2).to(output.dtype)
    record = getattr(module, _RECORD_ATTR, None)
    if record is not None:
        record["argmax"] = _argmax_keys(query, key, record["positions"])
    return output, weights


def register_attention() -> str:
    """Register the attention function (and SDPA's mask builder) with transformers; returns its name."""
    from transformers import AttentionInterface
    from transformers.masking_utils import AttentionMaskInterface, sdpa_mask

    AttentionInterface.register(ATTN_IMPLEMENTATION, datamixer_attention)
    AttentionMaskInterface.register(ATTN_IMPLEMENTATION, sdpa_mask)
    return ATTN_IMPLEMENTATION


def prepare_model(model: Any) -> Any:
    """Switch a loaded model to the masking-capable attention function (same weights, same results)."""
    register_attention()
    if model.config._attn_implementation != ATTN_IMPLEMENTATION:
        model.set_attn_implementation(ATTN_IMPLEMENTATION)
    return model


def attention_modules(model: Any) -> list[torch.nn.Module]:
    """The self-attention module of each decoder layer, in layer order."""
    modules = []
    for index, layer in enumerate(lm.decoder_layers(model)):
        found = [m for m in layer.modules() if type(m).__name__.endswith("Attention")]
        if not found:
            raise ValueError(f"{type(model).__name__}: layer {index} has no *Attention module")
        modules.append(found[0])
    return modules


def head_count(model: Any) -> tuple[int, int]:
    """(layers, attention heads per layer)."""
    return int(model.config.num_hidden_layers), int(model.config.num_attention_heads)


@contextlib.contextmanager
def uniform_heads(model: Any, heads: Sequence[Head], right_padded: bool = False) -> Iterator[None]:
    """Within the block, the given (layer, head) pairs attend uniformly over the visible causal prefix.

    `right_padded=True` promises that inputs are right-padded (or unpadded) and that outputs at padded
    positions are ignored; the uniform average is then a cumulative mean, never a [T, T] product.
    """
    if model.config._attn_implementation != ATTN_IMPLEMENTATION:
        raise ValueError(f"call prepare_model first: the model uses {model.config._attn_implementation!r}")
    modules = attention_modules(model)
    by_layer: dict[int, list[int]] = {}
    for layer, head in heads:
        by_layer.setdefault(int(layer), []).append(int(head))
    for layer, layer_heads in by_layer.items():
        setattr(modules[layer], _UNIFORM_ATTR, (sorted(set(layer_heads)), right_padded))
    try:
        yield
    finally:
        for layer in by_layer:
            delattr(modules[layer], _UNIFORM_ATTR)


# --- probes -----------------------------------------------------------------------------------

_SENTENCE_END = re.compile(r"(?<=[.!?])\s+")
_BAD_CHARS = re.compile(r'["\\{}\[\]`<>|]')


def split_sentences(text: str) -> list[str]:
    """Sentences of a text, whitespace collapsed; drops fragments unfit for a JSON value."""
    out = []
    for piece in _SENTENCE_END.split(" ".join(text.split())):
        if len(piece.split()) >= 4 and len(piece) <= 240 and not _BAD_CHARS.search(piece):
            out.append(piece)
    return out


def stdlib_sentences(limit: int = 20000) -> list[str]:
    """Sentences from the docstrings of the Python standard library's top-level modules (no download)."""
    root = Path(sysconfig.get_paths()["stdlib"])
    sentences: list[str] = []
    seen: set[str] = set()
    for path in sorted(root.glob("*.py")):
        try:
            tree = ast.parse(path.read_text(encoding="utf-8"))
        except (SyntaxError, UnicodeDecodeError, OSError):
            continue
        for node in ast.walk(tree):
            if isinstance(node, (ast.Module, ast.ClassDef, ast.FunctionDef, ast.AsyncFunctionDef)):
                for sentence in split_sentences(ast.get_docstring(node) or ""):
                    if sentence not in seen:
                        seen.add(sentence)
                        sentences.append(sentence)
        if len(sentences) >= limit:
            break
    return sentences[:limit]


def corpus_sentences(pattern: str, limit: int = 20000, field: str = "text") -> list[str]:
    """Sentences from the `text` field of JSONL files matching a glob, in file order."""
    from scorers.jsonl import jsonl_records

    sentences: list[str] = []
    seen: set[str] = set()
    for _path, _number, record in jsonl_records(pattern, field):
        for sentence in split_sentences(str(record[field])):
            if sentence not in seen:
                seen.add(sentence)
                sentences.append(sentence)
        if len(sentences) >= limit:
            return sentences
    return sentences


@dataclass
class Probe:
    """One retrieval probe: token ids, the needle's token span and the answer's token span ([start, end))."""

    input_ids: list[int]
    needle: tuple[int, int]
    answer: tuple[int, int]


_INSTRUCTION = "Extract the value corresponding to the specified key in the JSON object below.\n\n"


def _probe_text(pairs: Sequence[tuple[str, str]], shots: Sequence[int],
                query: int) -> tuple[str, tuple[int, int], int]:
    """Prompt text, the needle's character span and where the answer starts."""
    text = _INSTRUCTION + "{"
    needle = (0, 0)
    for i, (key, value) in enumerate(pairs):
        text += ("" if i == 0 else ", ") + f'"{key}": "'
        if i == query:
            needle = (len(text), len(text) + len(value))
        text += value + '"'
    text += "}\n\n"
    for i in shots:
        text += f'Key: "{pairs[i][0]}"\nValue: {pairs[i][1]}\n\n'
    text += f'Key: "{pairs[query][0]}"\nValue:'
    answer_start = len(text)
    return text + " " + pairs[query][1], needle, answer_start


def _token_span(offsets: Sequence[tuple[int, int]], start: int, end: int) -> tuple[int, int]:
    """Tokens whose characters overlap [start, end)."""
    inside = [i for i, (a, b) in enumerate(offsets) if b > start and a < end and b > a]
    return (inside[0], inside[-1] + 1) if inside else (0, 0)


def _encode_probe(tokenizer: Any, pairs: list[tuple[float, str, str]],
                  n_roles: int) -> tuple[Any, str, tuple[int, int], int]:
    """Tokenize a probe whose first `n_roles` pairs are the shots then the query; JSON order by sort key."""
    order = sorted(range(len(pairs)), key=lambda i: pairs[i][0])
    position = {pair: rank for rank, pair in enumerate(order)}
    ordered = [(pairs[i][1], pairs[i][2]) for i in order]
    shots = [position[i] for i in range(n_roles - 1)]
    text, needle, answer_start = _probe_text(ordered, shots, position[n_roles - 1])
    return tokenizer(text, add_special_tokens=True, return_offsets_mapping=True), text, needle, answer_start


def build_probes(tokenizer: Any, sentences: Sequence[str], n_probes: int = DEFAULT_PROBES,
                 max_tokens: int = DEFAULT_PROBE_TOKENS, seed: int = 0) -> list[Probe]:
    """Synthetic 3-shot JSON key-value retrieval prompts of at most `max_tokens` tokens (Hua et al. 2025).

    Keys are random 32-character alphanumeric strings, values are sentences of at most 30 tokens;
    the JSON holds as many pairs as fit, three of them are worked examples and one is asked for.
    """
    sentences = list(dict.fromkeys(sentences))
    n_roles = N_SHOTS + 1
    rng = random.Random(seed)
    alphabet = string.ascii_letters + string.digits
    sample_key = "".join(rng.choices(alphabet, k=KEY_CHARS))
    key_tokens = len(tokenizer(sample_key, add_special_tokens=False)["input_ids"])
    instruction_tokens = len(tokenizer(_INSTRUCTION, add_special_tokens=True)["input_ids"])
    # The four worked/asked pairs show each value twice; cap value length so that they always fit.
    longest = min(MAX_VALUE_TOKENS, (max_tokens - instruction_tokens - 2 * n_roles * (key_tokens + 6)) // 8)
    encoded = tokenizer(sentences, add_special_tokens=False)["input_ids"] if sentences else []
    lengths = [len(ids) for ids in encoded]
    value_tokens = {s: n for s, n in zip(sentences, lengths, strict=True) if 0 < n <= longest}
    values = list(value_tokens)
    if len(values) < n_roles:
        raise ValueError(f"need at least {n_roles} distinct sentences of at most {max(longest, 0)} tokens "
                         f"(max_tokens={max_tokens}), got {len(values)}")
    probes = []
    for _ in range(n_probes):
        pairs: list[tuple[float, str, str]] = []
        budget = max_tokens - instruction_tokens
        for value in rng.sample(values, min(len(values), 4096)):
            in_json = value_tokens[value] + key_tokens + 6
            cost = in_json * 2 if len(pairs) < n_roles else in_json
            if len(pairs) >= n_roles and cost > budget:
                break
            pairs.append((rng.random(), "".join(rng.choices(alphabet, k=KEY_CHARS)), value))
            budget -= cost
        while True:
            encoded, text, needle, answer_start = _encode_probe(tokenizer, pairs, n_roles)
            excess = len(encoded["input_ids"]) - max_tokens
            if excess <= 0:
                break
            if len(pairs) == n_roles:
                raise ValueError(f"max_tokens={max_tokens} is too small for a {N_SHOTS}-shot probe")
            drop = max(1, excess // (key_tokens + 8 + MAX_VALUE_TOKENS))
            del pairs[max(n_roles, len(pairs) - drop):]
        offsets = [tuple(o) for o in encoded["offset_mapping"]]
        probes.append(Probe(list(encoded["input_ids"]), _token_span(offsets, *needle),
                            _token_span(offsets, answer_start, len(text))))
    return probes


# --- retrieval scores and head selection --------------------------------------------------------

@contextlib.contextmanager
def _recording(model: Any, positions: torch.Tensor) -> Iterator[list[dict[str, torch.Tensor]]]:
    records = [{"positions": positions} for _ in attention_modules(model)]
    modules = attention_modules(model)
    for module, record in zip(modules, records, strict=True):
        setattr(module, _RECORD_ATTR, record)
    try:
        yield records
    finally:
        for module in modules:
            delattr(module, _RECORD_ATTR)


@torch.inference_mode()
def retrieval_head_scores(model: Any, probes: Sequence[Probe], pad_id: int = 0,
                          batch_tokens: int = lm.DEFAULT_BATCH_TOKENS,
                          on_batch: Callable[[int], None] | None = None) -> np.ndarray:
    """Mean retrieval score of every head over the probes: array [layers, heads] in [0, 1].
    `on_batch(n)` is called after each batch of `n` probes (progress)."""
    prepare_model(model)
    device = next(model.parameters()).device
    n_layers, n_heads = head_count(model)
    totals = np.zeros((n_layers, n_heads))
    counted = 0
    lengths = [len(p.input_ids) for p in probes]
    for batch in lm.length_buckets(lengths, batch_tokens, lm.DEFAULT_MAX_BATCH_SIZE):
        chosen = [probes[i] for i in batch]
        # The step predicting answer token p runs at query position p - 1.
        targets = [list(range(max(p.answer[0], 1), p.answer[1])) for p in chosen]
        width = max(1, max(len(t) for t in targets))
        positions = torch.zeros((len(chosen), width), dtype=torch.long)
        for row, t in enumerate(targets):
            positions[row, : len(t)] = torch.tensor(t, dtype=torch.long) - 1
        ids, mask = lm.pad_batch([p.input_ids for p in chosen], pad_id, device)
        with _recording(model, positions.to(device)) as records:
            lm.hidden_states(model, ids, mask)
        argmax = torch.stack([r["argmax"] for r in records], dim=1).cpu().numpy()  # [B, L, H, A]
        ids_np = ids.cpu().numpy()
        for row, (probe, t) in enumerate(zip(chosen, targets, strict=True)):
            if not t:
                continue
            where = argmax[row, :, :, : len(t)]
            in_needle = (where >= probe.needle[0]) & (where < probe.needle[1])
            same_token = ids_np[row][where] == ids_np[row][np.asarray(t)]
            totals += (in_needle & same_token).mean(axis=-1)
            counted += 1
        if on_batch is not None:
            on_batch(len(chosen))
    if counted == 0:
        raise ValueError("no probe has an answer token to score")
    return totals / counted


def select_heads(scores: np.ndarray, top_fraction: float = DEFAULT_TOP_FRACTION) -> list[Head]:
    """The top `top_fraction` of heads by score (at least one); ties go to the lower (layer, head)."""
    if not 0 < top_fraction <= 1:
        raise ValueError(f"top_fraction must be in (0, 1], got {top_fraction}")
    flat = np.asarray(scores, dtype=float).ravel()
    k = max(1, int(round(top_fraction * flat.size)))
    order = np.lexsort((np.arange(flat.size), -flat))[:k]
    n_heads = scores.shape[1]
    return sorted((int(i // n_heads), int(i % n_heads)) for i in order)


def heads_document(scores: np.ndarray, heads: Sequence[Head], provenance: dict[str, Any]) -> dict[str, Any]:
    """The HEADS.json content: selected heads, every head's score, and how they were computed."""
    return {
        "selected": [list(h) for h in heads],
        "scores": np.round(np.asarray(scores, dtype=float), 6).tolist(),
        "n_layers": int(scores.shape[0]),
        "n_heads": int(scores.shape[1]),
        "method": SCORE_METHOD,
        "provenance": provenance,
    }


def load_heads(path: str | os.PathLike[str], model: Any | None = None) -> list[Head]:
    """Selected (layer, head) pairs from a HEADS.json; checked against `model` when given."""
    path = Path(path)
    if not path.exists():
        raise FileNotFoundError(f"{path}: no such heads file")
    try:
        data = json.loads(path.read_text())
        heads = [(int(layer), int(head)) for layer, head in data["selected"]]
    except (json.JSONDecodeError, KeyError, TypeError, ValueError) as exc:
        raise ValueError(f"{path}: expected JSON with 'selected': [[layer, head], ...]") from exc
    if not heads:
        raise ValueError(f"{path}: 'selected' is empty")
    if model is not None:
        n_layers, n_heads = head_count(model)
        for layer, head in heads:
            if not (0 <= layer < n_layers and 0 <= head < n_heads):
                raise ValueError(f"{path}: head ({layer}, {head}) is outside the model's "
                                 f"{n_layers} layers x {n_heads} heads")
    return heads


# --- scoring ------------------------------------------------------------------------------------

@dataclass
class DocumentScores:
    """Per document: AttentionInfluence score, loss without and with masking (nats/token), token count."""

    score: np.ndarray
    loss_base: np.ndarray
    loss_masked: np.ndarray
    n_tokens: np.ndarray


class AttentionInfluenceScorer:
    """Scores documents with a local causal LM whose retrieval heads are masked.

    `setup()` loads the model once; `score_batch(texts)` returns one score per text (NaN for texts
    of under two tokens). Chunks of all texts in a call are batched by similar length.
    """

    def __init__(self, model_dir: str | os.PathLike[str] | None,
                 heads: Sequence[Head] | str | os.PathLike[str], device: str | None = None,
                 dtype: str | None = None, max_tokens: int | None = None,
                 batch_tokens: int = lm.DEFAULT_BATCH_TOKENS,
                 max_batch_size: int = lm.DEFAULT_MAX_BATCH_SIZE):
        self.model_dir = model_dir
        self.heads = heads
        self.device = device
        self.dtype = dtype
        self.max_tokens = max_tokens
        self.batch_tokens = batch_tokens
        self.max_batch_size = max_batch_size
        self.model_: Any = None
        self.tokenizer_: Any = None
        self.heads_: list[Head] = []

    @classmethod
    def from_model(cls, model: Any, tokenizer: Any, heads: Sequence[Head],
                   **kwargs: Any) -> AttentionInfluenceScorer:
        """A scorer around an already loaded model (same weights; its attention function is switched)."""
        scorer = cls(None, heads, **kwargs)
        scorer.model_, scorer.tokenizer_ = prepare_model(model), tokenizer
        scorer.heads_ = scorer._check_heads()
        return scorer

    def setup(self) -> AttentionInfluenceScorer:
        """Load the model and tokenizer (once)."""
        if self.model_ is None:
            if self.model_dir is None:
                raise ValueError("AttentionInfluenceScorer.setup() needs model_dir (or use from_model)")
            register_attention()
            self.model_, self.tokenizer_ = lm.load_causal_lm(
                self.model_dir, self.device, self.dtype, attn_implementation=ATTN_IMPLEMENTATION)
            self.heads_ = self._check_heads()
        return self

    def _check_heads(self) -> list[Head]:
        if isinstance(self.heads, (str, os.PathLike)):
            return load_heads(self.heads, self.model_)
        heads = [(int(layer), int(head)) for layer, head in self.heads]
        n_layers, n_heads = head_count(self.model_)
        if not heads or any(not (0 <= a < n_layers and 0 <= b < n_heads) for a, b in heads):
            raise ValueError(f"heads must be non-empty (layer, head) pairs within {n_layers} x {n_heads}")
        return heads

    @property
    def first_masked_layer(self) -> int:
        return min(layer for layer, _ in self.heads_)

    def score_batch(self, texts: Sequence[str]) -> np.ndarray:
        """AttentionInfluence score of each text (float64)."""
        return np.asarray(self.score_documents(texts).score, dtype=np.float64)

    @torch.inference_mode()
    def score_documents(self, texts: Sequence[str]) -> DocumentScores:
        """Scores, both losses and token counts of each text."""
        self.setup()
        model, tokenizer = self.model_, self.tokenizer_
        device = next(model.parameters()).device
        plan = lm.ChunkPlan.build(tokenizer, texts, lm.context_length(model, self.max_tokens))
        sums = np.zeros((2, len(texts)))
        counts = np.zeros(len(texts))
        for batch in plan.batches(self.batch_tokens, self.max_batch_size):
            ids, mask = lm.pad_batch([plan.chunks[i] for i in batch], lm.pad_id(tokenizer), device)
            (base, masked), n = self._two_pass(ids, mask)
            for row, chunk in enumerate(batch):
                doc = plan.doc_index[chunk]
                sums[0, doc] += float(base[row])
                sums[1, doc] += float(masked[row])
                counts[doc] += int(n[row])
        with np.errstate(invalid="ignore", divide="ignore"):
            loss_base = np.where(counts > 0, sums[0] / np.maximum(counts, 1), np.nan)
            loss_masked = np.where(counts > 0, sums[1] / np.maximum(counts, 1), np.nan)
            score = (loss_masked - loss_base) / loss_base
        return DocumentScores(score, loss_base, loss_masked, np.asarray(plan.n_tokens, dtype=np.int64))

    def _two_pass(self, ids: torch.Tensor,
                  mask: torch.Tensor) -> tuple[tuple[torch.Tensor, torch.Tensor], torch.Tensor]:
        """Summed token NLL per row unmasked and masked; layers below the first masked one run once."""
        model = self.model_
        layers = lm.decoder_layers(model)
        first = self.first_masked_layer
        store: dict[str, Any] = {}
        capture = lm.capture_output(layers[first - 1], store) if first > 0 else contextlib.nullcontext()
        with capture:
            hidden = lm.hidden_states(model, ids, mask)
        base, n = lm.token_nll_sums(model, hidden, ids, mask)
        replay = (lm.replay_layers(layers[:first], store.get("output")) if first > 0
                  else contextlib.nullcontext())
        with uniform_heads(model, self.heads_, right_padded=True), replay:
            hidden = lm.hidden_states(model, ids, mask)
        masked, _ = lm.token_nll_sums(model, hidden, ids, mask)
        return (base, masked), n
