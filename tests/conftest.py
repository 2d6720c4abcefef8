"""Tiny randomly initialised models built from configs (no downloads), and the data mirror."""

from __future__ import annotations

import os
from pathlib import Path

import pytest
import torch

WORDS = (
    "[PAD] [UNK] [CLS] [SEP] [MASK] <s> </s> the a of in is was born capital city country paris france "
    "london england rome italy berlin germany language speaks who where . , alice bob carol dave"
).split()

MIRROR = Path(os.environ.get("KN_DATA_MIRROR", Path(__file__).resolve().parents[2] / "shared" / "data"))


def _word_tokenizer(kind: str):
    """A whitespace word-level tokenizer over WORDS, as a transformers fast tokenizer."""
    from tokenizers import Tokenizer, models, pre_tokenizers, processors
    from transformers import PreTrainedTokenizerFast

    vocab = {w: i for i, w in enumerate(WORDS)}
    tok = Tokenizer(models.WordLevel(vocab, unk_token="[UNK]"))
    tok.normalizer = None
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


@pytest.fixture(scope="session")
def tiny_bert():
    from transformers import BertConfig, BertForMaskedLM

    from kn_lib.models import adapter_for

    torch.manual_seed(0)
    config = BertConfig(
        vocab_size=len(WORDS), hidden_size=32, num_hidden_layers=3, num_attention_heads=4, intermediate_size=48,
        max_position_embeddings=64, hidden_dropout_prob=0.0, attention_probs_dropout_prob=0.0,
    )
    return adapter_for(BertForMaskedLM(config).eval(), _word_tokenizer("masked"), "tiny-bert")


@pytest.fixture(scope="session")
def tiny_llama():
    from transformers import LlamaConfig, LlamaForCausalLM

    from kn_lib.models import adapter_for

    torch.manual_seed(0)
    config = LlamaConfig(
        vocab_size=len(WORDS), hidden_size=32, num_hidden_layers=3, num_attention_heads=4, num_key_value_heads=2,
        intermediate_size=48, max_position_embeddings=64, tie_word_embeddings=True,
    )
    return adapter_for(LlamaForCausalLM(config).eval(), _word_tokenizer("causal"), "tiny-llama")


@pytest.fixture(params=["tiny_bert", "tiny_llama"])
def tiny(request):
    return request.getfixturevalue(request.param)


@pytest.fixture(scope="session")
def mirror() -> Path:
    if not (MIRROR / "knowledge-neurons" / "BingDistantTREx" / "query_pairs.json").is_file():
        pytest.fail(f"data mirror not found at {MIRROR}; set KN_DATA_MIRROR")
    return MIRROR


@pytest.fixture(scope="session")
def smollm2():
    """The real offline default model (SmolLM2-135M-Instruct, Q4_1 GGUF from PyPI), loaded once per run."""
    from kn_lib.models import load_model

    return load_model("smollm2-135m")
