"""What every experiment needs: the facts' prompts, the model's answer to them, perplexity, skip records.

Perplexity is defined here and nowhere else (``perplexity``); so is the bookkeeping of inputs an
experiment could not use (``SkipLog``): every one is a row with a reason, never silently dropped.
"""

from __future__ import annotations

import math
import random
from dataclasses import dataclass, field
from typing import Iterable, Mapping, Sequence

import pandas as pd
import torch

from ..adapters import EncodedPrompt, ModelAdapter
from ..data import Relation
from ..pipeline import encode_fact

SKIP_COLUMNS = ["experiment", "relation", "fact_id", "item", "reason"]


@dataclass
class SkipLog:
    """Inputs an experiment could not use, one row each: which relation / fact / item, and why."""

    experiment: str
    rows: list[dict] = field(default_factory=list)

    def add(self, reason: str, relation: str | None = None, fact_id: str | None = None, item: str | None = None) -> None:
        self.rows.append({"experiment": self.experiment, "relation": relation, "fact_id": fact_id, "item": item, "reason": reason})

    def frame(self) -> pd.DataFrame:
        return pd.DataFrame(self.rows, columns=SKIP_COLUMNS)


@dataclass(frozen=True)
class Prompt:
    """One usable prompt of a fact, encoded for the model."""

    fact_id: str
    relation: str
    template_id: int
    encoded: EncodedPrompt


class FactPrompts:
    """Encodes each fact's prompts once, on demand; unusable ones go to the skip log (once per fact)."""

    def __init__(self, adapter: ModelAdapter, facts: Iterable[Mapping], relations: Mapping[str, Relation], skips: SkipLog):
        self.adapter, self.relations, self.skips = adapter, relations, skips
        self.facts: dict[str, Mapping] = {f["fact_id"]: f for f in facts}
        self._cache: dict[str, list[Prompt]] = {}

    def of(self, fact_id: str) -> list[Prompt]:
        """The usable prompts of a fact (possibly none, each reason logged)."""
        if fact_id not in self._cache:
            fact = self.facts[fact_id]
            if fact["relation"] not in self.relations:
                raise ValueError(f"fact {fact_id}: relation {fact['relation']} not in the given relations")
            usable, unusable = encode_fact(self.adapter, fact, self.relations[fact["relation"]].templates)
            for row in unusable:
                item = None if row["template_id"] is None else f"template {row['template_id']}"
                self.skips.add(row["reason"], fact["relation"], fact_id, item)
            if not usable and not unusable:
                self.skips.add("no usable prompt", fact["relation"], fact_id)
            self._cache[fact_id] = [Prompt(fact_id, fact["relation"], t, p) for t, p in usable]
        return self._cache[fact_id]

    def by_relation(self) -> dict[str, list[str]]:
        """Fact ids grouped by relation, in input order."""
        out: dict[str, list[str]] = {}
        for fact_id, fact in self.facts.items():
            out.setdefault(fact["relation"], []).append(fact_id)
        return out


@torch.no_grad()
def answer_distribution(adapter: ModelAdapter, prompt: EncodedPrompt) -> torch.Tensor:
    """The model's next-token (or mask) distribution at the answer position, as it is now (hooks and
    weight edits included): [vocab] float32."""
    logits = adapter.logits_at(prompt.input_ids[None].to(adapter.device), prompt.answer_pos)
    return logits.float().softmax(-1)[0].cpu()


@torch.no_grad()
def answer_distributions(adapter: ModelAdapter, prompt: EncodedPrompt, copies: int) -> torch.Tensor:
    """``answer_distribution`` of ``copies`` copies of one prompt in one batch: [copies, vocab]. With a
    hook that treats the batch's rows differently (``scaled_activations`` with one factor per row), one
    forward pass gives the unchanged and the intervened distributions (equal to separate passes up to
    float rounding)."""
    ids = prompt.input_ids[None].expand(copies, -1).to(adapter.device)
    return adapter.logits_at(ids, prompt.answer_pos).float().softmax(-1).cpu()


@torch.no_grad()
def answer_log_distribution(adapter: ModelAdapter, prompt: EncodedPrompt) -> torch.Tensor:
    """``log`` of ``answer_distribution``, computed as a log-softmax: finite where float32 probabilities
    underflow to 0 (below about 1e-45), which makes a perplexity computed from p infinite."""
    logits = adapter.logits_at(prompt.input_ids[None].to(adapter.device), prompt.answer_pos)
    return logits.float().log_softmax(-1)[0].cpu()


@dataclass(frozen=True)
class Readout:
    """What an experiment reads of a prompt's answer distribution: p and log p (log-softmax) of one token,
    and the top-1 token."""

    p: float
    log_p: float
    top1: int


@torch.no_grad()
def answer_readouts(adapter: ModelAdapter, prompts: Sequence[EncodedPrompt], targets: Sequence[int] | None = None,
                    batch_size: int = 32) -> list[Readout]:
    """``Readout`` of each prompt for its token in ``targets`` (default: the prompt's answer), in the given
    order, from ``answer_log_batches``, each distribution reduced as soon as it is computed: holding every
    distribution would take 1 MB a prompt for Gemma's 262,144 tokens (10 GB for one erased relation)."""
    targets = [p.target_id for p in prompts] if targets is None else list(targets)
    if len(targets) != len(prompts):
        raise ValueError(f"{len(targets)} targets for {len(prompts)} prompts")
    out: list[Readout | None] = [None] * len(prompts)
    for chunk, logs in answer_log_batches(adapter, prompts, batch_size):
        for i, row in zip(chunk, logs):
            out[i] = Readout(float(row[targets[i]].exp()), float(row[targets[i]]), int(row.argmax()))
    return out  # type: ignore[return-value]


@torch.no_grad()
def answer_log_batches(adapter: ModelAdapter, prompts: Sequence[EncodedPrompt], batch_size: int = 32):
    """``answer_log_distribution`` of many prompts, batch by batch: (prompt indices, their log distributions
    [batch, vocab]). Batched without padding: prompts of the same length and answer position go through the
    model together (so no attention mask and no padding token can change a result; a batch differs from
    one-at-a-time only by float rounding). Evaluating every prompt of a relation (the official erase) is
    then minutes, not hours, on a CPU."""
    if batch_size < 1:
        raise ValueError(f"batch_size must be >= 1, got {batch_size}")
    groups: dict[tuple[int, int], list[int]] = {}
    for i, p in enumerate(prompts):
        groups.setdefault((int(p.input_ids.shape[-1]), int(p.answer_pos)), []).append(i)
    for (_, pos), members in groups.items():
        for start in range(0, len(members), batch_size):
            chunk = members[start:start + batch_size]
            ids = torch.stack([prompts[i].input_ids for i in chunk]).to(adapter.device)
            yield chunk, adapter.logits_at(ids, pos).float().log_softmax(-1).cpu()


def answered_correctly(adapter: ModelAdapter, prompts: Sequence[Prompt]) -> list[Prompt]:
    """The prompts whose top-1 token is their answer (a fact the model "knows" on that prompt), in order;
    batched as ``answer_log_batches``."""
    reads = answer_readouts(adapter, [p.encoded for p in prompts])
    return [p for p, r in zip(prompts, reads) if r.top1 == p.encoded.target_id]


def perplexity(probabilities: Sequence[float]) -> float:
    r"""Perplexity of the correct answers over a set of prompts (paper, sections 5.1 and 5.2, Tables 5-6):

        PPL = exp( -(1/n) \sum_{i=1}^{n} \log p_i ),

    where p_i is the probability the model gives to prompt i's correct answer at the answer position.
    For one prompt it is 1 / p. The paper does not write the formula; this is the one the official
    scripts compute (``np.exp(mean(log(1 / p)))`` in ``6_edit_knowledge_sampled.py`` and
    ``7_erase_knowledge.py``). A zero probability gives ``inf``; an empty set is an error.
    """
    logs = [math.log(p) if p > 0 else -math.inf for p in probabilities]
    log_ppl = log_perplexity(logs)
    return math.exp(log_ppl) if log_ppl < 709.78 else math.inf  # beyond that exp overflows a float


def log_perplexity(log_probabilities: Sequence[float]) -> float:
    r"""log PPL = -(1/n) \sum_i \log p_i, from the log-probabilities themselves (``perplexity``'s exponent;
    finite where a float32 p would underflow to 0, when the log p come from a log-softmax)."""
    if len(log_probabilities) == 0:
        raise ValueError("perplexity of an empty set of prompts")
    return -math.fsum(log_probabilities) / len(log_probabilities)


def seeded_rng(seed: int, key: str) -> random.Random:
    """A generator for one fact or relation, so that its draws do not depend on which other facts are
    in the run. Seeding with a string is deterministic across processes (SHA-512, not ``hash``)."""
    return random.Random(f"{seed}/{key}")


def tag_of(refined: pd.DataFrame) -> dict[str, str]:
    """Model and attribution method a refined table came from (``"?"`` when it does not say)."""
    tag = {}
    for key in ("model", "method"):
        values = sorted(set(refined[key])) if key in refined.columns and len(refined) else []
        tag[key] = "+".join(map(str, values)) if values else "?"
    return tag
