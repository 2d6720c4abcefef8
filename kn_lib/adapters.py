"""One adapter per architecture family: where the FFN neurons are, and where the answer is predicted.

A *knowledge neuron* (Dai et al. 2022, section 3.1) is one unit of the FFN intermediate activation, the
vector that the FFN's output projection reads: in ``FFN(x) = f(x K^T) V`` it is ``f(x K^T)``. The adapter
names, for each layer, the module whose *input* is that activation (BERT: ``output.dense``; LLaMA:
``mlp.down_proj``; GPT-2: ``mlp.c_proj``); the columns of that module's weight are the neurons' value slots.

Two families differ in where the answer is read:

* masked LM: the template's ``[Y]`` becomes the mask token; the answer position is the mask;
* causal LM: the prompt is cut just before ``[Y]``; the answer is the next token after the last prompt
  token, so templates where ``[Y]`` precedes ``[X]`` cannot be used.
"""

from __future__ import annotations

import contextlib
import copy
import inspect
from dataclasses import dataclass
from typing import Callable, Iterator

import torch
from torch import nn

from .data import causal_usable, fill


class UnusablePrompt(ValueError):
    """A template this model family cannot ask (the reason is the message)."""


class MultiTokenObject(ValueError):
    """The answer is not a single token of the model's vocabulary (the paper keeps single-token answers)."""


@dataclass(frozen=True)
class EncodedPrompt:
    """A prompt ready for the model: token ids, the position whose neurons we study, the answer token."""

    input_ids: torch.Tensor  # [seq] int64
    answer_pos: int  # position of the FFN activation studied and of the logits read
    target_id: int  # the answer's token id
    text: str  # the text given to the model


# (path to the list of blocks, path inside a block to the FFN output projection)
_FFN_LAYOUTS = (
    ("model.layers", "mlp.down_proj"),  # LLaMA, Mistral, Qwen, Gemma, SmolLM
    ("transformer.h", "mlp.c_proj"),  # GPT-2, GPT-J style
    ("gpt_neox.layers", "mlp.dense_4h_to_h"),  # GPT-NeoX, Pythia
    ("bert.encoder.layer", "output.dense"),  # BERT
    ("roberta.encoder.layer", "output.dense"),  # RoBERTa
    ("encoder.layer", "output.dense"),  # bare encoders
)


def _get(obj: object, path: str) -> object:
    for name in path.split("."):
        obj = getattr(obj, name)
    return obj


def find_blocks(model: nn.Module) -> tuple[list[nn.Module], list[nn.Module]]:
    """The Transformer blocks, and in each the FFN output projection whose input is the activation."""
    for blocks_path, proj_path in _FFN_LAYOUTS:
        try:
            blocks = list(_get(model, blocks_path))  # type: ignore[call-overload]
        except AttributeError:
            continue
        return blocks, [_get(block, proj_path) for block in blocks]  # type: ignore[misc]
    raise ValueError(f"{type(model).__name__}: unknown architecture, no FFN layout of {[b for b, _ in _FFN_LAYOUTS]}")


def find_ffn_projections(model: nn.Module) -> list[nn.Module]:
    """The FFN output projection of every layer, whose input is the intermediate activation."""
    return find_blocks(model)[1]


class ModelAdapter:
    """Common machinery: encoding, reading activations, patching the answer position's neurons."""

    family: str = ""

    def __init__(self, model: nn.Module, tokenizer, name: str = "") -> None:
        self.model = model.eval()
        self.tokenizer = tokenizer
        self.name = name or getattr(model.config, "_name_or_path", type(model).__name__)
        self.blocks, self.projections = find_blocks(model)
        for p in model.parameters():  # we differentiate w.r.t. activations only
            p.requires_grad_(False)

    # -- shape ---------------------------------------------------------------------------------
    @property
    def n_layers(self) -> int:
        return len(self.projections)

    @property
    def n_neurons(self) -> int:
        proj = self.projections[0]
        return proj.in_features if isinstance(proj, nn.Linear) else proj.weight.shape[0]  # GPT-2 Conv1D: [in, out]

    @property
    def device(self) -> torch.device:
        return next(self.model.parameters()).device

    # -- prompts -------------------------------------------------------------------------------
    def encode(self, template: str, subject: str, obj: str) -> EncodedPrompt:
        raise NotImplementedError

    def answer_token(self, obj: str, template: str = "[X] [Y]") -> int:
        """The answer's single token id, or ``MultiTokenObject``."""
        raise NotImplementedError

    def single_token(self, obj: str, template: str = "[X] [Y]") -> int | None:
        """``answer_token`` for the draws that pass over a multi-token object: its id, or None."""
        try:
            return self.answer_token(obj, template)
        except MultiTokenObject:
            return None

    # -- forward passes ------------------------------------------------------------------------
    def logits_at(self, input_ids: torch.Tensor, pos: int, attention_mask: torch.Tensor | None = None) -> torch.Tensor:
        """Logits [batch, vocab] at one position."""
        return self.model(input_ids=input_ids, attention_mask=attention_mask).logits[:, pos]

    @contextlib.contextmanager
    def patch(self, layer: int, pos: int, fn: Callable[[torch.Tensor], torch.Tensor]) -> Iterator[None]:
        """Replace layer ``layer``'s FFN activation at position ``pos`` by ``fn(activation)``.

        ``fn`` gets and returns a [batch, n_neurons] tensor; the replacement is out of place so that
        gradients flow to whatever ``fn`` builds it from.
        """

        def hook(module: nn.Module, args: tuple) -> tuple:
            hidden = args[0]
            patched = hidden.clone()
            patched[:, pos] = fn(hidden[:, pos])
            return (patched, *args[1:])

        handle = self.projections[layer].register_forward_pre_hook(hook)
        try:
            yield
        finally:
            handle.remove()

    @torch.no_grad()
    def block_inputs(self, **forward_kwargs) -> tuple[list[torch.Tensor], bool]:
        """One forward pass recording the hidden state entering every block, and whether blocks
        return tuples (older transformers) or tensors; ``start_at`` replays from these."""
        inputs: list[torch.Tensor] = [None] * len(self.blocks)  # type: ignore[list-item]
        returns_tuple = []

        def pre(i):
            return lambda m, args, kwargs: inputs.__setitem__(i, (args[0] if args else kwargs["hidden_states"]).detach())

        handles = [b.register_forward_pre_hook(pre(i), with_kwargs=True) for i, b in enumerate(self.blocks)]
        handles.append(self.blocks[0].register_forward_hook(lambda m, a, out: returns_tuple.append(isinstance(out, tuple))))
        try:
            self.model(**forward_kwargs)
        finally:
            for h in handles:
                h.remove()
        return inputs, returns_tuple[0]

    @contextlib.contextmanager
    def start_at(self, layer: int, hidden: torch.Tensor, returns_tuple: bool) -> Iterator[None]:
        """Run the model from block ``layer`` upward: blocks below pass their input through untouched
        (no compute) and block ``layer`` receives ``hidden`` (e.g. its recorded input, one row per batch
        item) instead. Exact whenever ``hidden`` is what the skipped blocks would have produced."""

        def skip(hidden_states, *args, **kwargs):
            return (hidden_states,) if returns_tuple else hidden_states

        def replace(module, args, kwargs):
            if args:
                return (hidden, *args[1:]), kwargs
            return args, {**kwargs, "hidden_states": hidden}

        for block in self.blocks[:layer]:
            block.forward = skip  # instance attribute shadows the class's forward
        handle = self.blocks[layer].register_forward_pre_hook(replace, with_kwargs=True)
        try:
            yield
        finally:
            handle.remove()
            for block in self.blocks[:layer]:
                del block.forward

    @contextlib.contextmanager
    def growing_batch(self, active: list[int], joining: list[torch.Tensor | None], returns_tuple: bool) -> Iterator[None]:
        """Run the blocks one at a time on a batch that grows as it climbs (the fast attribution path).

        Batch rows are sorted by the block where they *join*: block ``l`` runs on the first ``active[l]``
        rows only, the ``active[l-1]`` rows coming out of block ``l-1`` and, after them, the rows that join
        here, entering with hidden state ``joining[l]`` (their recorded input of block ``l``); so no row
        computes a block below the one it joins at, and blocks with no row do not run. The model's
        forward supplies the other block inputs (attention mask, position embeddings, ...) for all
        ``active[-1]`` rows; each block gets them cut to its rows. A key/value cache must already hold
        ``active[l]`` rows in layer ``l`` (``CausalLMAdapter.cache_for_rows``).
        """
        total = active[-1]

        def runner(layer: int, block_forward: Callable):
            def forward(hidden_states, *args, **kwargs):
                n_before, n = (active[layer - 1] if layer else 0), active[layer]
                if n == 0:  # no row yet: the input (the embeddings) passes on untouched
                    return (hidden_states,) if returns_tuple else hidden_states
                if n_before == 0:  # the first rows: the block's input is theirs alone
                    hidden = joining[layer]
                elif n > n_before:
                    hidden = torch.cat([hidden_states, joining[layer].to(hidden_states.dtype)])
                else:
                    hidden = hidden_states
                return block_forward(hidden, *_first_rows(args, total, n), **_first_rows(kwargs, total, n))

            return forward

        for layer, block in enumerate(self.blocks):
            block.forward = runner(layer, block.forward)  # instance attribute shadows the class's forward
        try:
            yield
        finally:
            for block in self.blocks:
                del block.forward

    @torch.no_grad()
    def record(self, positions: torch.Tensor, **forward_kwargs) -> tuple[list[torch.Tensor], torch.Tensor, bool]:
        """One forward pass recording the hidden state entering every block, the FFN activations
        [batch, n_layers, n_neurons] at one position per batch row, and whether blocks return tuples."""
        acts: list[torch.Tensor] = [None] * self.n_layers  # type: ignore[list-item]
        def hook(layer):
            def read(module, args):
                rows = torch.arange(len(positions), device=args[0].device)
                acts[layer] = args[0][rows, positions.to(args[0].device)].detach().clone()

            return read

        handles = [proj.register_forward_pre_hook(hook(layer)) for layer, proj in enumerate(self.projections)]
        try:
            inputs, returns_tuple = self.block_inputs(**forward_kwargs)
        finally:
            for h in handles:
                h.remove()
        return inputs, torch.stack(acts, 1), returns_tuple

    def final_hidden(self, **forward_kwargs) -> torch.Tensor:
        """The last hidden state [batch, seq, d_model] that the vocabulary head reads (no head computed)."""
        kwargs = {k: v for k, v in forward_kwargs.items() if k != "logits_to_keep"}
        return self.model.base_model(**kwargs).last_hidden_state

    def head(self, hidden: torch.Tensor) -> torch.Tensor:
        """Logits [..., vocab] from final hidden states, as the model's own forward computes them."""
        raise NotImplementedError

    @torch.no_grad()
    def activations(self, prompt: EncodedPrompt) -> torch.Tensor:
        """FFN intermediate activations at the answer position, all layers: [n_layers, n_neurons]."""
        captured: list[torch.Tensor] = [None] * self.n_layers  # type: ignore[list-item]
        handles = []
        for layer, proj in enumerate(self.projections):

            def hook(module, args, layer=layer):
                captured[layer] = args[0][0, prompt.answer_pos].detach().clone()

            handles.append(proj.register_forward_pre_hook(hook))
        try:
            self.logits_at(prompt.input_ids[None].to(self.device), prompt.answer_pos)
        finally:
            for h in handles:
                h.remove()
        return torch.stack(captured)

    @torch.no_grad()
    def answer_probability(self, prompt: EncodedPrompt) -> float:
        """p(answer | prompt) with the model as it is (hooks included)."""
        logits = self.logits_at(prompt.input_ids[None].to(self.device), prompt.answer_pos)
        return logits.float().softmax(-1)[0, prompt.target_id].item()


def _first_rows(obj, total: int, n: int):
    """Cut every tensor with ``total`` rows (the batch dimension) in a nest of args to its first ``n``."""
    if isinstance(obj, torch.Tensor):
        return obj[:n] if obj.dim() and obj.shape[0] == total else obj
    if isinstance(obj, tuple):
        return tuple(_first_rows(o, total, n) for o in obj)
    if isinstance(obj, list):
        return [_first_rows(o, total, n) for o in obj]
    if isinstance(obj, dict):
        return {k: _first_rows(v, total, n) for k, v in obj.items()}
    return obj


class MaskedLMAdapter(ModelAdapter):
    """BERT-style masked LMs: ``[Y]`` becomes the mask token, the answer position is the mask."""

    family = "masked"

    def head(self, hidden: torch.Tensor) -> torch.Tensor:
        """The MLM head (BERT: ``cls``, RoBERTa: ``lm_head``) applied to the given positions only."""
        for name in ("cls", "lm_head"):
            if hasattr(self.model, name):
                return getattr(self.model, name)(hidden)
        raise ValueError(f"{type(self.model).__name__}: no masked-LM head named cls or lm_head")

    def answer_token(self, obj: str, template: str = "[X] [Y]") -> int:
        pieces = self.tokenizer.tokenize(obj)
        if len(pieces) != 1:
            raise MultiTokenObject(f"{obj!r} is {len(pieces)} tokens for {self.name}: {pieces}")
        return self.tokenizer.convert_tokens_to_ids(pieces[0])

    def encode(self, template: str, subject: str, obj: str) -> EncodedPrompt:
        target = self.answer_token(obj, template)
        text = fill(template, subject).replace("[Y]", self.tokenizer.mask_token)
        ids = self.tokenizer(text, return_tensors="pt").input_ids[0]
        mask_positions = (ids == self.tokenizer.mask_token_id).nonzero().flatten()
        if len(mask_positions) != 1:
            raise UnusablePrompt(f"{text!r}: expected one mask token, found {len(mask_positions)}")
        return EncodedPrompt(ids, int(mask_positions[0]), target, text)


class CausalLMAdapter(ModelAdapter):
    """LLaMA / GPT-style causal LMs: the prompt is the template cut just before ``[Y]``."""

    family = "causal"

    @property
    def cache_argument(self) -> str:
        """Name of the key/value cache argument (transformers 5 renamed ``past_key_values`` to ``cache``)."""
        return "cache" if "cache" in inspect.signature(self.model.forward).parameters else "past_key_values"

    def head(self, hidden: torch.Tensor) -> torch.Tensor:
        """The output embeddings, with the final logit soft-capping of models that have one (Gemma 2/3)."""
        logits = self.model.get_output_embeddings()(hidden)
        cap = getattr(self.model.config, "final_logit_softcapping", None)
        return logits if cap is None else torch.tanh(logits / cap) * cap

    def cache_for_rows(self, cache, rows: list[torch.Tensor]):
        """A copy of a prompts' key/value cache whose layer ``l`` holds the rows ``rows[l]`` (indices of
        the prompts, one per batch row), for ``growing_batch``. A layer with no rows keeps its prompts'
        rows (its block does not run, but the model reads the cache length from layer 0)."""
        cache = copy.deepcopy(cache)
        for layer, index in zip(cache.layers, rows):
            if len(index):
                layer.batch_select_indices(index)
        return cache

    def answer_token(self, obj: str, template: str = "[X] [Y]") -> int:
        before = template[: template.index("[Y]")]
        # The answer follows a space in almost every template; BPE vocabularies then hold " Paris".
        text = (" " + obj) if (before == "" or before[-1].isspace()) else obj
        ids = self.tokenizer(text, add_special_tokens=False).input_ids
        if len(ids) != 1:
            raise MultiTokenObject(f"{text!r} is {len(ids)} tokens for {self.name}")
        return ids[0]

    def encode(self, template: str, subject: str, obj: str) -> EncodedPrompt:
        if not causal_usable(template):
            raise UnusablePrompt(f"{template!r}: [Y] precedes [X], a causal model cannot predict it")
        target = self.answer_token(obj, template)
        text = fill(template[: template.index("[Y]")], subject).rstrip()
        ids = self.tokenizer(text, return_tensors="pt").input_ids[0]
        return EncodedPrompt(ids, len(ids) - 1, target, text)

    def logits_at(self, input_ids: torch.Tensor, pos: int, attention_mask: torch.Tensor | None = None) -> torch.Tensor:
        if pos in (-1, input_ids.shape[1] - 1):  # the usual case: skip the vocabulary projection elsewhere
            return self.model(input_ids=input_ids, attention_mask=attention_mask, logits_to_keep=1).logits[:, -1]
        return super().logits_at(input_ids, pos, attention_mask)
