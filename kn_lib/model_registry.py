"""A registry of model builders: names beyond ``models.load_model``, with two tiny random models.

The runner and the ``kn`` command load models by *name* (a Ray worker gets a name, never a model), so
a test or smoke run needs a name for a model it can build without downloads. ``register_model`` adds
one; ``tiny-random-llama`` and ``tiny-random-bert`` are registered here: 3 layers x 48 FFN neurons,
weights drawn with seed 0 (identical in every process), a word-level tokenizer over a small fixed
vocabulary (other words become ``[UNK]``, so one-word objects are single tokens). Their neurons mean
nothing: they exist to exercise the machinery quickly.

Every other name goes to ``models.load_model`` (offline GGUF models, then Hugging Face ids).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable

from . import models

TINY_WORDS = (
    "[PAD] [UNK] [CLS] [SEP] [MASK] <s> </s> the a an of in is was born capital city country paris france "
    "london england rome italy berlin germany language speaks who where . , alice bob carol dave by and to "
    "from on at for with its his her their that which as has have it located part official native work"
).split()


@dataclass(frozen=True)
class RegisteredModel:
    """A model built by a function of the device, with the description results record."""

    description: str
    build: Callable[[str], models.ModelAdapter]  # device -> adapter


MODEL_BUILDERS: dict[str, RegisteredModel] = {}


def register_model(name: str, description: str, build: Callable[[str], models.ModelAdapter]) -> None:
    """Make ``name`` loadable by the runner and ``kn --model``; the builder must be deterministic."""
    MODEL_BUILDERS[name] = RegisteredModel(description, build)


def known_names() -> list[str]:
    """Names that load without a model hub: registered ones and the offline GGUF models."""
    return [*models.OFFLINE_MODELS, *MODEL_BUILDERS]


def describe_model(name: str) -> str:
    """What results record next to the model name."""
    return MODEL_BUILDERS[name].description if name in MODEL_BUILDERS else models.describe(name)


def check_model(name: str) -> None:
    """Raise ``models.UnknownModel`` early (before any work), in one line, when the name cannot load.

    Checks a local copy first, then asks the hub once (``models.hub_config``)."""
    if name in MODEL_BUILDERS or name in models.OFFLINE_MODELS:
        return
    models.hub_config(name, known_names())


def load_adapter(name: str, device: str = "cpu") -> models.ModelAdapter:
    """A registered model, or whatever ``models.load_model`` makes of the name."""
    if name in MODEL_BUILDERS:
        return MODEL_BUILDERS[name].build(device)
    return models.load_model(name, device=device)


def _word_tokenizer(kind: str):
    from tokenizers import Tokenizer, pre_tokenizers, processors
    from tokenizers import models as tok_models
    from transformers import PreTrainedTokenizerFast

    vocab = {w: i for i, w in enumerate(TINY_WORDS)}
    tok = Tokenizer(tok_models.WordLevel(vocab, unk_token="[UNK]"))
    tok.pre_tokenizer = pre_tokenizers.Sequence([pre_tokenizers.WhitespaceSplit(), pre_tokenizers.Punctuation()])
    if kind == "masked":
        tok.post_processor = processors.TemplateProcessing(
            single="[CLS] $A [SEP]", special_tokens=[("[CLS]", vocab["[CLS]"]), ("[SEP]", vocab["[SEP]"])]
        )
        return PreTrainedTokenizerFast(
            tokenizer_object=tok, unk_token="[UNK]", pad_token="[PAD]", mask_token="[MASK]", cls_token="[CLS]", sep_token="[SEP]"
        )
    tok.post_processor = processors.TemplateProcessing(single="<s> $A", special_tokens=[("<s>", vocab["<s>"])])
    return PreTrainedTokenizerFast(tokenizer_object=tok, unk_token="[UNK]", pad_token="[PAD]", bos_token="<s>", eos_token="</s>")


def _seeded(make: Callable[[], object]) -> object:
    """Build under seed 0 without disturbing the caller's random state."""
    import torch

    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(0)
        return make()


def tiny_llama(device: str = "cpu") -> models.ModelAdapter:
    from transformers import LlamaConfig, LlamaForCausalLM

    config = LlamaConfig(
        vocab_size=len(TINY_WORDS), hidden_size=32, num_hidden_layers=3, num_attention_heads=4, num_key_value_heads=2,
        intermediate_size=48, max_position_embeddings=128, tie_word_embeddings=True,
    )
    model = _seeded(lambda: LlamaForCausalLM(config).eval())
    return models.adapter_for(model.to(device), _word_tokenizer("causal"), "tiny-random-llama")


def tiny_bert(device: str = "cpu") -> models.ModelAdapter:
    from transformers import BertConfig, BertForMaskedLM

    config = BertConfig(
        vocab_size=len(TINY_WORDS), hidden_size=32, num_hidden_layers=3, num_attention_heads=4, intermediate_size=48,
        max_position_embeddings=128, hidden_dropout_prob=0.0, attention_probs_dropout_prob=0.0,
    )
    model = _seeded(lambda: BertForMaskedLM(config).eval())
    return models.adapter_for(model.to(device), _word_tokenizer("masked"), "tiny-random-bert")


register_model("tiny-random-llama", "tiny random LLaMA (3 layers x 48 FFN neurons, seed 0, word-level vocabulary; tests and smoke runs only)", tiny_llama)
register_model("tiny-random-bert", "tiny random BERT (3 layers x 48 FFN neurons, seed 0, word-level vocabulary; tests and smoke runs only)", tiny_bert)
