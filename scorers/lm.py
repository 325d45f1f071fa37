"""Local Hugging Face causal LMs: loading, chunking, length-bucketed batching, per-document token loss.

Shared by the AttentionInfluence scorer and any scorer that needs a model's loss on a document
(e.g. PreSelect). Nothing here downloads: models and tokenizers load from local directories or `.gguf`
files only.
"""

from __future__ import annotations

import contextlib
import hashlib
import importlib.util
import os
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

DEFAULT_MAX_TOKENS = 1024
DEFAULT_BATCH_TOKENS = 16384
DEFAULT_MAX_BATCH_SIZE = 64
LOGIT_CHUNK_ROWS = 4096


def pick_device(device: str | torch.device | None = None) -> torch.device:
    """`device` as given, else CUDA when available, else CPU."""
    if device is not None:
        return torch.device(device)
    return torch.device("cuda" if torch.cuda.is_available() else "cpu")


def pick_dtype(device: torch.device, dtype: str | torch.dtype | None = None) -> torch.dtype:
    """`dtype` as given; by default bfloat16 on a CUDA device that supports it, float32 elsewhere."""
    if isinstance(dtype, torch.dtype):
        return dtype
    if dtype is None or dtype == "auto":
        if device.type == "cuda" and torch.cuda.is_bf16_supported():
            return torch.bfloat16
        return torch.float32
    names = {
        "float32": torch.float32,
        "fp32": torch.float32,
        "bfloat16": torch.bfloat16,
        "bf16": torch.bfloat16,
        "float16": torch.float16,
        "fp16": torch.float16,
    }
    if dtype not in names:
        raise ValueError(f"unknown dtype {dtype!r}; use one of {sorted(names)} or 'auto'")
    return names[dtype]


def gguf_cache_root() -> Path:
    """Where GGUF files are converted to model directories: `$DATAMIXER_CACHE/gguf`, else ~/.cache."""
    root = os.environ.get("DATAMIXER_CACHE") or Path.home() / ".cache" / "datamixer"
    return Path(root) / "gguf"


def _file_digest(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as handle:
        for block in iter(lambda: handle.read(1 << 22), b""):
            digest.update(block)
    return digest.hexdigest()[:16]


def gguf_model_dir(
    gguf_file: str | os.PathLike[str], cache_root: str | os.PathLike[str] | None = None
) -> Path:
    """A Hugging Face directory converted from a `.gguf` file once (dequantized to float32), then reused.

    The directory is `<cache_root>/<name>-<sha256 prefix>` (default root `gguf_cache_root()`), written
    atomically; transformers reads the GGUF (needs the `gguf` package) and its tokenizer.
    """
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from mixer.files import atomic_path

    path = Path(gguf_file)
    if not path.is_file():
        raise FileNotFoundError(f"{path}: no such GGUF file")
    if importlib.util.find_spec("gguf") is None:
        raise ImportError(f"{path}: reading .gguf needs the gguf package (pip install 'datamixer[gguf]')")
    target = Path(cache_root or gguf_cache_root()) / f"{path.stem}-{_file_digest(path)}"
    if (target / "config.json").exists():
        return target
    tokenizer = AutoTokenizer.from_pretrained(path.parent, gguf_file=path.name, local_files_only=True)
    model = AutoModelForCausalLM.from_pretrained(
        path.parent, gguf_file=path.name, local_files_only=True, dtype=torch.float32
    )
    # The weights are dequantized float32 tensors: serializable as such.
    model.hf_quantizer = None  # type: ignore[assignment]
    if hasattr(model.config, "quantization_config"):
        del model.config.quantization_config
    with atomic_path(target) as tmp:
        model.save_pretrained(tmp)
        tokenizer.save_pretrained(tmp)
    return target


def model_directory(model: str | os.PathLike[str]) -> Path:
    """A local HF model directory for `model`: the directory itself, or one converted from a `.gguf`."""
    path = Path(model)
    if path.suffix.lower() == ".gguf":
        return gguf_model_dir(path)
    if not (path / "config.json").exists():
        raise FileNotFoundError(
            f"{path}: not a Hugging Face model directory (no config.json) nor a .gguf file"
        )
    return path


def load_causal_lm(
    model_dir: str | os.PathLike[str],
    device: str | torch.device | None = None,
    dtype: str | torch.dtype | None = None,
    attn_implementation: str | None = None,
) -> tuple[Any, Any]:
    """Load a causal LM and its own tokenizer from a local directory or `.gguf` file, in eval mode.

    A `.gguf` file is converted to a directory once (`gguf_model_dir`) and read from there after.
    """
    from transformers import AutoModelForCausalLM, AutoTokenizer

    path = model_directory(model_dir)
    dev = pick_device(device)
    tokenizer = AutoTokenizer.from_pretrained(path, local_files_only=True)
    kwargs: dict[str, Any] = {"local_files_only": True, "dtype": pick_dtype(dev, dtype)}
    if attn_implementation is not None:
        kwargs["attn_implementation"] = attn_implementation
    model = AutoModelForCausalLM.from_pretrained(path, **kwargs)
    model.to(dev).eval()  # type: ignore[arg-type]
    return model, tokenizer


def context_length(model: Any, max_tokens: int | None = None) -> int:
    """Tokens per chunk: `max_tokens` capped at the model's context (default min(context, 1024))."""
    limit = getattr(model.config, "max_position_embeddings", None) or DEFAULT_MAX_TOKENS
    if max_tokens is None:
        return int(min(limit, DEFAULT_MAX_TOKENS))
    if max_tokens < 2:
        raise ValueError(f"max_tokens must be at least 2, got {max_tokens}")
    return int(min(limit, max_tokens))


def decoder_layers(model: Any) -> torch.nn.ModuleList:
    """The model's list of decoder blocks (`model.layers`, `gpt_neox.layers`, `transformer.h`, ...)."""
    base = model.base_model
    n_layers = model.config.num_hidden_layers
    for name in ("layers", "h", "blocks"):
        layers = getattr(base, name, None)
        if isinstance(layers, torch.nn.ModuleList) and len(layers) == n_layers:
            return layers
    for module in base.children():
        if isinstance(module, torch.nn.ModuleList) and len(module) == n_layers:
            return module
    raise ValueError(f"{type(model).__name__}: cannot find its {n_layers} decoder layers")


def tokenize(tokenizer: Any, texts: Sequence[str]) -> list[list[int]]:
    """Token ids of each text, with the tokenizer's own special tokens (e.g. Llama's BOS)."""
    if not texts:
        return []
    return [list(ids) for ids in tokenizer(list(texts), add_special_tokens=True)["input_ids"]]


def chunk_ids(ids: Sequence[int], max_len: int) -> list[list[int]]:
    """Windows of `max_len` tokens overlapping by one, so every token but the first is predicted once."""
    if len(ids) < 2:
        return []
    stride = max_len - 1
    return [list(ids[start : start + max_len]) for start in range(0, len(ids) - 1, stride)]


def length_buckets(lengths: Sequence[int], batch_tokens: int, max_batch_size: int) -> list[list[int]]:
    """Group indices of similar length into batches whose padded size stays within `batch_tokens`."""
    order = sorted(range(len(lengths)), key=lambda i: (-lengths[i], i))
    batches: list[list[int]] = []
    current: list[int] = []
    for i in order:
        width = lengths[current[0]] if current else lengths[i]
        if current and ((len(current) + 1) * width > batch_tokens or len(current) >= max_batch_size):
            batches.append(current)
            current = []
        current.append(i)
    if current:
        batches.append(current)
    return batches


def pad_batch(
    chunks: Sequence[Sequence[int]], pad_token: int, device: torch.device
) -> tuple[torch.Tensor, torch.Tensor]:
    """Right-padded `input_ids` and `attention_mask` for a list of token lists."""
    width = max(len(c) for c in chunks)
    ids = torch.full((len(chunks), width), pad_token, dtype=torch.long)
    mask = torch.zeros((len(chunks), width), dtype=torch.long)
    for row, chunk in enumerate(chunks):
        ids[row, : len(chunk)] = torch.tensor(chunk, dtype=torch.long)
        mask[row, : len(chunk)] = 1
    return ids.to(device), mask.to(device)


def pad_id(tokenizer: Any) -> int:
    """Token used for padding (its value never matters: padded positions are masked and not scored)."""
    for value in (tokenizer.pad_token_id, tokenizer.eos_token_id):
        if value is not None:
            return int(value)
    return 0


def hidden_states(model: Any, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
    """Final hidden states (after the last norm) of the base model, without the LM head."""
    out = model.base_model(input_ids=input_ids, attention_mask=attention_mask, use_cache=False)
    return out.last_hidden_state


def token_nll_sums(
    model: Any, hidden: torch.Tensor, input_ids: torch.Tensor, attention_mask: torch.Tensor
) -> tuple[torch.Tensor, torch.Tensor]:
    """Per row: summed next-token cross-entropy (nats, float32) and number of predicted tokens.

    Applies the LM head in chunks of rows over real (unpadded) positions only, so the full
    [batch, length, vocab] logits tensor is never built.
    """
    head = model.get_output_embeddings()
    cap = getattr(model.config, "final_logit_softcapping", None)
    valid = (attention_mask[:, :-1] * attention_mask[:, 1:]).bool()
    rows = valid.nonzero(as_tuple=True)
    states = hidden[:, :-1][valid]
    targets = input_ids[:, 1:][valid]
    nll = torch.empty(targets.shape[0], dtype=torch.float32, device=hidden.device)
    for start in range(0, targets.shape[0], LOGIT_CHUNK_ROWS):
        logits = head(states[start : start + LOGIT_CHUNK_ROWS]).float()
        if cap:
            logits = torch.tanh(logits / cap) * cap
        nll[start : start + LOGIT_CHUNK_ROWS] = torch.nn.functional.cross_entropy(
            logits, targets[start : start + LOGIT_CHUNK_ROWS], reduction="none"
        )
    sums = torch.zeros(input_ids.shape[0], dtype=torch.float32, device=hidden.device)
    sums.index_add_(0, rows[0], nll)
    return sums, valid.sum(dim=1)


@dataclass
class ChunkPlan:
    """Chunks of a list of documents, and which document each chunk belongs to."""

    chunks: list[list[int]]
    doc_index: list[int]
    n_tokens: list[int]

    @classmethod
    def build(cls, tokenizer: Any, texts: Sequence[str], max_len: int) -> ChunkPlan:
        chunks: list[list[int]] = []
        doc_index: list[int] = []
        n_tokens: list[int] = []
        for doc, ids in enumerate(tokenize(tokenizer, texts)):
            n_tokens.append(len(ids))
            for chunk in chunk_ids(ids, max_len):
                chunks.append(chunk)
                doc_index.append(doc)
        return cls(chunks, doc_index, n_tokens)

    def batches(self, batch_tokens: int, max_batch_size: int) -> Iterator[list[int]]:
        yield from length_buckets([len(c) for c in self.chunks], batch_tokens, max_batch_size)


@torch.inference_mode()
def document_losses(
    model: Any,
    tokenizer: Any,
    texts: Sequence[str],
    max_tokens: int | None = None,
    batch_tokens: int = DEFAULT_BATCH_TOKENS,
    max_batch_size: int = DEFAULT_MAX_BATCH_SIZE,
) -> tuple[np.ndarray, np.ndarray]:
    """Mean next-token cross-entropy of each document (NaN when it has under 2 tokens) and its token count.

    Long documents are split into chunks of the model's context; the mean weights chunks by tokens.
    """
    device = next(model.parameters()).device
    plan = ChunkPlan.build(tokenizer, texts, context_length(model, max_tokens))
    sums = np.zeros(len(texts))
    counts = np.zeros(len(texts))
    for batch in plan.batches(batch_tokens, max_batch_size):
        ids, mask = pad_batch([plan.chunks[i] for i in batch], pad_id(tokenizer), device)
        nll, n = token_nll_sums(model, hidden_states(model, ids, mask), ids, mask)
        for row, chunk in enumerate(batch):
            sums[plan.doc_index[chunk]] += float(nll[row])
            counts[plan.doc_index[chunk]] += int(n[row])
    with np.errstate(invalid="ignore", divide="ignore"):
        losses = np.where(counts > 0, sums / np.maximum(counts, 1), np.nan)
    return losses, np.asarray(plan.n_tokens, dtype=np.int64)


@contextlib.contextmanager
def replay_layers(layers: Sequence[torch.nn.Module] | torch.nn.ModuleList, output: Any) -> Iterator[None]:
    """Make `layers` return a stored `output` without computing (the shared prefix of two passes).

    The stored value is the last of these layers' output from an earlier pass on the same batch;
    every replayed layer returns it, and the layers after them take it as their input.
    """
    for layer in layers:
        layer.forward = lambda *args, **kwargs: output
    try:
        yield
    finally:
        for layer in layers:
            del layer.forward


@contextlib.contextmanager
def capture_output(layer: torch.nn.Module, store: dict[str, Any]) -> Iterator[None]:
    """Record `layer`'s output of the next forward pass in `store['output']`."""
    handle = layer.register_forward_hook(lambda module, args, output: store.__setitem__("output", output))
    try:
        yield
    finally:
        handle.remove()
