"""Tiny decoder-only causal LMs (Llama architecture) with named sizes.

A size is named by its non-embedding parameter count (everything but the token embedding and
the output head), the `N` of scaling laws; `non_embedding_params` gives the exact number.
Checkpoints are plain Hugging Face directories (`save_pretrained` plus the tokenizer), so
`AutoModelForCausalLM.from_pretrained(dir)` and `AutoTokenizer.from_pretrained(dir)` load them.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from transformers import LlamaConfig, LlamaForCausalLM


EMBED_INIT_STD = 0.3


@dataclass(frozen=True)
class ModelSize:
    """Shape of one named proxy model (the vocabulary comes from the tokenizer)."""

    hidden: int
    layers: int
    heads: int
    intermediate: int

    def non_embedding_params(self) -> int:
        """Exact non-embedding parameters: attention, MLP and RMSNorm weights of every layer,
        plus the final norm (Llama has no biases; key/value heads equal query heads)."""
        h, i = self.hidden, self.intermediate
        per_layer = 4 * h * h + 3 * h * i + 2 * h
        return self.layers * per_layer + h

    def embedding_params(self, vocab_size: int) -> int:
        """Input embedding plus the untied output head."""
        return 2 * vocab_size * self.hidden


# Named by their non-embedding parameter count, rounded. Each step is about 2-2.5x the last,
# so three neighbours span a decade for a scaling-law fit.
SIZES: dict[str, ModelSize] = {
    "20k": ModelSize(hidden=32, layers=2, heads=4, intermediate=64),
    "50k": ModelSize(hidden=48, layers=2, heads=4, intermediate=112),
    "100k": ModelSize(hidden=64, layers=2, heads=4, intermediate=176),
    "200k": ModelSize(hidden=80, layers=3, heads=4, intermediate=176),
    "500k": ModelSize(hidden=128, layers=3, heads=4, intermediate=256),
    "1m": ModelSize(hidden=160, layers=4, heads=4, intermediate=320),
    "3m": ModelSize(hidden=256, layers=4, heads=8, intermediate=640),
}


def get_size(name: str) -> ModelSize:
    """The named size; ValueError listing the known names otherwise."""
    if name not in SIZES:
        raise ValueError(f"unknown model size {name!r}; known sizes: {', '.join(SIZES)}")
    return SIZES[name]


def llama_config(
    size: str | ModelSize, vocab_size: int, context: int, eos_id: int | None = None
) -> LlamaConfig:
    """A LlamaConfig for a named size, vocabulary and context length."""
    from transformers import LlamaConfig

    shape = get_size(size) if isinstance(size, str) else size
    return LlamaConfig(
        vocab_size=vocab_size,
        hidden_size=shape.hidden,
        intermediate_size=shape.intermediate,
        num_hidden_layers=shape.layers,
        num_attention_heads=shape.heads,
        num_key_value_heads=shape.heads,
        max_position_embeddings=context,
        tie_word_embeddings=False,
        bos_token_id=eos_id,
        eos_token_id=eos_id,
        pad_token_id=eos_id,
        use_cache=False,
    )


def build_model(
    config: LlamaConfig, seed: int = 0, embed_init_std: float = EMBED_INIT_STD
) -> LlamaForCausalLM:
    """A freshly initialised LlamaForCausalLM; the same seed gives the same weights.

    The token embedding starts at `embed_init_std` instead of Llama's 0.02: with the default, the
    layers' outputs swamp token identity in the residual stream of these narrow models at init,
    and at a few hundred steps the wider models trained slower than the narrow ones (measured on
    the stdlib fixture at 200k tokens: 20k 4.51, 100k 5.00, 500k 5.04 nats; with 0.3: 4.83,
    4.40, 4.17), which would invert the N axis of a scaling-law fit.
    """
    import torch
    from transformers import LlamaForCausalLM

    torch.manual_seed(seed)
    config._attn_implementation = "sdpa"
    model = LlamaForCausalLM(config)
    with torch.no_grad():
        model.get_input_embeddings().weight.normal_(0.0, embed_init_std)
    return model


def count_non_embedding(model: Any) -> int:
    """Non-embedding parameters of a built model (checks `ModelSize.non_embedding_params`)."""
    skip = {id(model.get_input_embeddings().weight), id(model.get_output_embeddings().weight)}
    return sum(p.numel() for p in model.parameters() if id(p) not in skip)


def save_checkpoint(
    model: Any, tokenizer_json: str, directory: str | os.PathLike[str], eos_token: str | None, context: int
) -> Path:
    """Save model and tokenizer as a Hugging Face directory, atomically."""
    from transformers import PreTrainedTokenizerFast
    from transformers.utils import logging as hf_logging

    from mixer.files import atomic_path

    hf_logging.disable_progress_bar()

    target = Path(directory)
    with atomic_path(target) as tmp:
        model.save_pretrained(tmp)
        tokenizer = PreTrainedTokenizerFast(
            tokenizer_object=_tokenizer_from_json(tokenizer_json),
            eos_token=eos_token,
            bos_token=eos_token,
            pad_token=eos_token,
            model_max_length=context,
        )
        tokenizer.save_pretrained(tmp)
    return target


def _tokenizer_from_json(text: str) -> Any:
    from tokenizers import Tokenizer

    return Tokenizer.from_str(text)
