"""Synthetic retrieval probes for AttentionInfluence's head detection (torch-free).

Each probe is a 3-shot JSON key-value prompt (Hua et al. 2025): random 32-character keys, sentence values,
three worked `Key: ... Value: ...` examples and one asked-for key, teacher-forced on the gold value. Each
token also gets a copy key: tokens whose text is the same once a leading space and quotes are stripped
share a key, so that `The` after a quote inside the JSON and ` The` in the answer, or `.",` and `.`,
count as the same token.
"""

from __future__ import annotations

import ast
import random
import re
import string
import sysconfig
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

MAX_VALUE_TOKENS = 30
KEY_CHARS = 32
N_SHOTS = 3
# (probes, tokens per probe, capped at the model's context). The paper: ~800 probes of about the
# model's context; on CPU fewer, shorter probes pick nearly the same heads (docs/attention-influence.md).
PROBE_DEFAULTS = {"cpu": (64, 512), "cuda": (800, 4096)}
DEFAULT_PROBES, DEFAULT_PROBE_TOKENS = PROBE_DEFAULTS["cuda"]


def probe_defaults(device_type: str) -> tuple[int, int]:
    """(number of probes, tokens per probe) for a device type: small on CPU, the paper's scale on GPU."""
    return PROBE_DEFAULTS["cpu" if device_type == "cpu" else "cuda"]


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
    """One retrieval probe: token ids, the needle's and the answer's token spans ([start, end)), and each
    token's copy key (equal keys = the same token for the retrieval score; default: the token id)."""

    input_ids: list[int]
    needle: tuple[int, int]
    answer: tuple[int, int]
    copy_keys: list[int] = field(default_factory=list)

    def keys(self) -> list[int]:
        return self.copy_keys or self.input_ids


class CopyKeys:
    """Token id -> copy key: ids whose decoded text matches after `normalize_token` share one key (the
    first such id seen); a token that is only spaces, quotes or commas keeps its own id."""

    def __init__(self, tokenizer: Any) -> None:
        self.tokenizer = tokenizer
        self._by_id: dict[int, int] = {}
        self._by_text: dict[str, int] = {}

    def __call__(self, ids: Sequence[int]) -> list[int]:
        missing = sorted({int(i) for i in ids} - self._by_id.keys())
        for token, text in zip(missing, self.tokenizer.batch_decode([[i] for i in missing]), strict=True):
            norm = normalize_token(text)
            self._by_id[token] = self._by_text.setdefault(norm, token) if norm else token
        return [self._by_id[int(i)] for i in ids]


def normalize_token(text: str) -> str:
    """A token's text without surrounding whitespace, quotes and commas (the JSON around a value)."""
    return text.strip().strip("\"'`,").strip()


def copy_ceiling(probes: Sequence[Probe]) -> float:
    """Fraction of answer tokens whose copy key occurs in the needle: the highest reachable score."""
    hits = total = 0
    for probe in probes:
        keys = probe.keys()
        needle = set(keys[probe.needle[0] : probe.needle[1]])
        answer = keys[probe.answer[0] : probe.answer[1]]
        hits += sum(k in needle for k in answer)
        total += len(answer)
    return hits / total if total else float("nan")


_INSTRUCTION = "Extract the value corresponding to the specified key in the JSON object below.\n\n"


def _probe_text(
    pairs: Sequence[tuple[str, str]], shots: Sequence[int], query: int
) -> tuple[str, tuple[int, int], int]:
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


def _encode_probe(
    tokenizer: Any, pairs: list[tuple[float, str, str]], n_roles: int
) -> tuple[Any, str, tuple[int, int], int]:
    """Tokenize a probe whose first `n_roles` pairs are the shots then the query; JSON order by sort key."""
    order = sorted(range(len(pairs)), key=lambda i: pairs[i][0])
    position = {pair: rank for rank, pair in enumerate(order)}
    ordered = [(pairs[i][1], pairs[i][2]) for i in order]
    shots = [position[i] for i in range(n_roles - 1)]
    text, needle, answer_start = _probe_text(ordered, shots, position[n_roles - 1])
    return tokenizer(text, add_special_tokens=True, return_offsets_mapping=True), text, needle, answer_start


def build_probes(
    tokenizer: Any,
    sentences: Sequence[str],
    n_probes: int = DEFAULT_PROBES,
    max_tokens: int = DEFAULT_PROBE_TOKENS,
    seed: int = 0,
    normalize: bool = True,
) -> list[Probe]:
    """Synthetic 3-shot JSON key-value retrieval prompts of at most `max_tokens` tokens (Hua et al. 2025).

    Keys are random 32-character alphanumeric strings, values are sentences of at most 30 tokens;
    the JSON holds as many pairs as fit, three of them are worked examples and one is asked for.
    `normalize=True` gives each probe copy keys from normalised token text (`CopyKeys`); else token ids.
    """
    sentences = list(dict.fromkeys(sentences))
    n_roles = N_SHOTS + 1
    rng = random.Random(seed)
    sample_key = "".join(rng.choices(string.ascii_letters + string.digits, k=KEY_CHARS))
    key_tokens = len(tokenizer(sample_key, add_special_tokens=False)["input_ids"])
    instruction_tokens = len(tokenizer(_INSTRUCTION, add_special_tokens=True)["input_ids"])
    # The four worked/asked pairs show each value twice; cap value length so that they always fit.
    fixed = instruction_tokens + 2 * n_roles * (key_tokens + 6)
    longest = min(MAX_VALUE_TOKENS, (max_tokens - fixed) // 8)
    if longest < 4:
        raise ValueError(
            f"max_tokens={max_tokens} is too small for {N_SHOTS}-shot probes with this tokenizer "
            f"({KEY_CHARS}-character keys take {key_tokens} tokens): use at least {fixed + 64}"
        )
    encoded = tokenizer(sentences, add_special_tokens=False)["input_ids"] if sentences else []
    lengths = [len(ids) for ids in encoded]
    value_tokens = {s: n for s, n in zip(sentences, lengths, strict=True) if 0 < n <= longest}
    values = list(value_tokens)
    if len(values) < n_roles:
        raise ValueError(
            f"need at least {n_roles} distinct sentences of at most {max(longest, 0)} tokens "
            f"(max_tokens={max_tokens}), got {len(values)}"
        )
    copy_keys = CopyKeys(tokenizer) if normalize else None
    fit = _Fit(tokenizer, values, value_tokens, key_tokens, max_tokens - instruction_tokens, max_tokens)
    return [fit.probe(rng, copy_keys) for _ in range(n_probes)]


@dataclass
class _Fit:
    """Fills one probe with as many key-value pairs as its token budget holds."""

    tokenizer: Any
    values: list[str]
    value_tokens: dict[str, int]
    key_tokens: int
    budget: int
    max_tokens: int

    def pairs(self, rng: random.Random) -> list[tuple[float, str, str]]:
        """(sort key, random key, value) pairs; the first N_SHOTS + 1 are the shots and the query."""
        alphabet = string.ascii_letters + string.digits
        pairs: list[tuple[float, str, str]] = []
        budget = self.budget
        for value in rng.sample(self.values, min(len(self.values), 4096)):
            in_json = self.value_tokens[value] + self.key_tokens + 6
            cost = in_json * 2 if len(pairs) <= N_SHOTS else in_json
            if len(pairs) > N_SHOTS and cost > budget:
                break
            pairs.append((rng.random(), "".join(rng.choices(alphabet, k=KEY_CHARS)), value))
            budget -= cost
        return pairs

    def probe(self, rng: random.Random, copy_keys: CopyKeys | None) -> Probe:
        """One probe of at most `max_tokens` tokens (pairs dropped from the end until it fits)."""
        pairs = self.pairs(rng)
        while True:
            encoded, text, needle, answer_start = _encode_probe(self.tokenizer, pairs, N_SHOTS + 1)
            excess = len(encoded["input_ids"]) - self.max_tokens
            if excess <= 0:
                break
            if len(pairs) == N_SHOTS + 1:
                raise ValueError(f"max_tokens={self.max_tokens} is too small for a {N_SHOTS}-shot probe")
            drop = max(1, excess // (self.key_tokens + 8 + MAX_VALUE_TOKENS))
            del pairs[max(N_SHOTS + 1, len(pairs) - drop) :]
        offsets = [tuple(o) for o in encoded["offset_mapping"]]
        ids = list(encoded["input_ids"])
        needle, answer = _token_span(offsets, *needle), _token_span(offsets, answer_start, len(text))
        return Probe(ids, needle, answer, copy_keys(ids) if copy_keys else [])
