"""Head masking inside the model's attention function: chosen heads attend uniformly over the causal prefix.

Two attention functions are registered with transformers, one over PyTorch SDPA and one over the model's
own eager attention; both add (a) uniform-prefix heads (position i attends 1/(visible keys) to each key it
may see, per query head, so grouped-query models mask single heads, not KV groups) and (b) recording of
each head's argmax key at a few query positions (for the retrieval score). One loaded model serves the
plain and the masked pass; the uniform average is accumulated in float32 whatever the model's dtype.
"""

from __future__ import annotations

import contextlib
import sys
from collections.abc import Iterator, Sequence
from typing import Any

import torch

from scorers import lm

ATTN_IMPLEMENTATION = "datamixer_uniform_sdpa"
EAGER_IMPLEMENTATION = "datamixer_uniform_eager"
IMPLEMENTATIONS = (ATTN_IMPLEMENTATION, EAGER_IMPLEMENTATION)

Head = tuple[int, int]

_UNIFORM_ATTR = "_datamixer_uniform_heads"
_RECORD_ATTR = "_datamixer_record"


def uniform_prefix_average(value: torch.Tensor, attention_mask: torch.Tensor | None) -> torch.Tensor:
    """Attention output of heads that attend uniformly over what they may see: [B, h, T, D] in float32.

    Without a mask, position i averages values 0..i (a cumulative mean). With a mask (bool: True =
    visible, or additive float), each query averages exactly its visible keys (none visible: zeros).
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


def argmax_keys(query: torch.Tensor, key: torch.Tensor, positions: torch.Tensor) -> torch.Tensor:
    """Per head, the causal argmax key of the queries at `positions` [B, A]: returns [B, H, A].

    Only the A recorded queries are scored against the keys ([B, H, A, T]), never the full [T, T].
    """
    n_rep = query.shape[1] // key.shape[1]
    index = positions[:, None, :, None].expand(-1, query.shape[1], -1, query.shape[3])
    q = query.gather(2, index).float()
    k = key.float().repeat_interleave(n_rep, dim=1) if n_rep > 1 else key.float()
    logits = q @ k.transpose(2, 3)
    future = torch.arange(k.shape[2], device=k.device)[None, None, None, :] > positions[:, None, :, None]
    return logits.masked_fill(future, float("-inf")).argmax(dim=-1)


def _apply_uniform(
    module: torch.nn.Module, output: torch.Tensor, value: torch.Tensor, attention_mask: torch.Tensor | None
) -> None:
    heads, right_padded = getattr(module, _UNIFORM_ATTR)
    n_rep = output.shape[2] // value.shape[1]
    kv_heads = [h // n_rep for h in heads]
    # With right padding, every real query sees exactly positions 0..i: the cumulative mean is exact.
    uniform = uniform_prefix_average(value[:, kv_heads], None if right_padded else attention_mask)
    output[:, :, heads] = uniform.transpose(1, 2).to(output.dtype)


def _with_masking(
    base: Any,
    module: torch.nn.Module,
    query: torch.Tensor,
    key: torch.Tensor,
    value: torch.Tensor,
    attention_mask: torch.Tensor | None,
    **kwargs: Any,
) -> tuple[torch.Tensor, Any]:
    output, weights = base(module, query, key, value, attention_mask, **kwargs)
    if getattr(module, _UNIFORM_ATTR, None):
        _apply_uniform(module, output, value, attention_mask)
    record = getattr(module, _RECORD_ATTR, None)
    if record is not None:
        record["argmax"] = argmax_keys(query, key, record["positions"])
    return output, weights


def sdpa_attention(module: torch.nn.Module, *args: Any, **kwargs: Any) -> tuple[torch.Tensor, Any]:
    """PyTorch SDPA attention, plus uniform-prefix heads and argmax recording when asked for (the
    arguments of transformers' attention interface: query, key, value, attention_mask, options)."""
    from transformers.integrations.sdpa_attention import sdpa_attention_forward

    return _with_masking(sdpa_attention_forward, module, *args, **kwargs)


def eager_attention(module: torch.nn.Module, *args: Any, **kwargs: Any) -> tuple[torch.Tensor, Any]:
    """The model's own eager attention (explicit softmax), plus uniform-prefix heads and recording."""
    base = getattr(sys.modules[type(module).__module__], "eager_attention_forward", None)
    if base is None:
        raise ValueError(f"{type(module).__name__}: its module defines no eager_attention_forward")
    return _with_masking(base, module, *args, **kwargs)


def register_attention(eager: bool = False) -> str:
    """Register both attention functions (with their mask builders); returns the SDPA (or eager) name."""
    from transformers import AttentionInterface
    from transformers.masking_utils import AttentionMaskInterface, eager_mask, sdpa_mask

    AttentionInterface.register(ATTN_IMPLEMENTATION, sdpa_attention)
    AttentionMaskInterface.register(ATTN_IMPLEMENTATION, sdpa_mask)
    AttentionInterface.register(EAGER_IMPLEMENTATION, eager_attention)
    AttentionMaskInterface.register(EAGER_IMPLEMENTATION, eager_mask)
    return EAGER_IMPLEMENTATION if eager else ATTN_IMPLEMENTATION


def prepare_model(model: Any, eager: bool | None = None) -> Any:
    """Switch a loaded model to a masking-capable attention function (same weights, same results).

    `eager=None` keeps the model's kind: eager attention stays eager, anything else becomes SDPA.
    """
    current = model.config._attn_implementation
    if eager is None:
        eager = current in ("eager", EAGER_IMPLEMENTATION)
    name = register_attention(eager)
    if current != name:
        model.set_attn_implementation(name)
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
    if model.config._attn_implementation not in IMPLEMENTATIONS:
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


@contextlib.contextmanager
def recording_argmax(model: Any, positions: torch.Tensor) -> Iterator[list[dict[str, torch.Tensor]]]:
    """Within the block, each layer records `argmax` [B, H, A]: every head's argmax key at `positions`."""
    modules = attention_modules(model)
    records = [{"positions": positions} for _ in modules]
    for module, record in zip(modules, records, strict=True):
        setattr(module, _RECORD_ATTR, record)
    try:
        yield records
    finally:
        for module in modules:
            delattr(module, _RECORD_ATTR)
