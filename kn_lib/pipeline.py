"""Find knowledge neurons for a set of facts: encode -> attribute -> coarse sets -> refined sets.

Everything comes back as tidy pandas tables (one row per observation) that carry the model name and
the settings, ready for Parquet:

* ``prompts``: one row per usable prompt: the text asked, p(answer), whether the answer is top-1;
* ``coarse``: one row per (fact, prompt, layer, neuron) above the coarse threshold, with its score;
* ``refined``: one row per (fact, layer, neuron) knowledge neuron, with its share of prompts;
* ``thresholds``: the p chosen for each relation and how the search ended;
* ``skipped``: every fact or prompt that could not be used, with the reason (never silently dropped).
"""

from __future__ import annotations

import numbers

from dataclasses import asdict, dataclass, field
from typing import Iterable, Literal, Mapping

import pandas as pd
import torch
from tqdm.auto import tqdm

from .adapters import EncodedPrompt, ModelAdapter, MultiTokenObject, UnusablePrompt
from .attribution import IGConfig, activation_attribution, integrated_gradients_many
from .data import Relation, as_facts, as_relations
from .refine import (
    OFFICIAL_MAX_EVALUATIONS, OFFICIAL_MIN_COUNT, SHARE_RULES, Neuron, ShareRule, adaptive_share_threshold, coarse_neurons,
    neuron_shares, refine_fact,
)

Method = Literal["ig", "activation"]
# coarse threshold t by method when none is given: the paper's 0.2 for integrated gradients, the official
# script's 0.5 for the activation baseline (2_get_kn.py; the paper's text gives no value for it)
DEFAULT_THRESHOLDS: dict[str, float] = {"ig": 0.2, "activation": 0.5}


@dataclass(frozen=True)
class KNConfig:
    """Settings of the whole search; the defaults are the paper's (section 4.1) where its text fixes
    them and the official scripts' where it does not (``share_rule``, the baseline's t)."""

    method: Method = "ig"  # "ig": integrated gradients; "activation": the paper's baseline
    ig: IGConfig = field(default_factory=IGConfig)
    threshold: float | None = None  # t: coarse neurons score > t * the prompt's maximum; None: by method
    share_rule: ShareRule = "official"  # refine.refine_fact: "official" (c >= max(p n, 3)) or "paper" (c > p n)
    p_start: float = 0.7  # initial share threshold p
    p_step: float = 0.05
    kn_low: float = 2.0  # p moves until the relation's mean KN count lies in [kn_low, kn_high]
    kn_high: float = 5.0
    max_evaluations: int = OFFICIAL_MAX_EVALUATIONS  # official rule: values of p tried at most
    min_count: int = OFFICIAL_MIN_COUNT  # official rule: a knowledge neuron is in at least this many prompts

    @property
    def coarse_threshold(self) -> float:
        """t in effect: the given one, else 0.2 for integrated gradients and 0.5 for the activation baseline."""
        return self.threshold if self.threshold is not None else DEFAULT_THRESHOLDS.get(self.method, 0.2)

    def as_row(self) -> dict:
        """Flat settings for a results table."""
        row = {k: v for k, v in asdict(self).items() if k != "ig"}
        row["threshold"] = self.coarse_threshold
        row.update({f"ig_{k}": v for k, v in asdict(self.ig).items()})
        return row

    def __post_init__(self) -> None:
        """Ranges of the settings: a bad one fails here, in words, not later as a ZeroDivisionError or
        a coarse set holding every neuron."""
        if self.method not in ("ig", "activation"):
            raise ValueError(f"KNConfig: method must be 'ig' or 'activation', got {self.method!r}")
        if not isinstance(self.ig, IGConfig):
            raise TypeError(f"KNConfig: ig must be an IGConfig, got {type(self.ig).__name__}")
        threshold = getattr(self, "threshold", None)
        if threshold is not None and not 0 <= threshold < 1:
            raise ValueError(f"KNConfig: threshold t must be in [0, 1) (coarse neurons score > t x the prompt's maximum), got {threshold}")
        if not 0 < self.p_start <= 1:
            raise ValueError(f"KNConfig: p_start must be in (0, 1] (a share of prompts), got {self.p_start}")
        if not 0 < self.p_step < 1:
            raise ValueError(f"KNConfig: p_step must be in (0, 1), got {self.p_step}")
        if not 0 <= self.kn_low <= self.kn_high:
            raise ValueError(f"KNConfig: need 0 <= kn_low <= kn_high, got kn_low={self.kn_low}, kn_high={self.kn_high}")
        if self.share_rule not in SHARE_RULES:
            raise ValueError(f"KNConfig: share_rule must be one of {', '.join(SHARE_RULES)}, got {self.share_rule!r}")
        for name in ("max_evaluations", "min_count"):  # nan and 2.5 pass a `< 1` check: ask for an integer
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, numbers.Integral):
                raise ValueError(f"KNConfig: {name} must be an integer >= 1, got {value!r}")
        if self.max_evaluations < 1 or self.min_count < 1:
            raise ValueError(f"KNConfig: max_evaluations and min_count must be >= 1, got {self.max_evaluations}, {self.min_count}")


@dataclass
class KNResult:
    prompts: pd.DataFrame
    coarse: pd.DataFrame
    refined: pd.DataFrame
    thresholds: pd.DataFrame
    skipped: pd.DataFrame


def encode_fact(
    adapter: ModelAdapter, fact: Mapping, templates: Iterable[str]
) -> tuple[list[tuple[int, EncodedPrompt]], list[dict]]:
    """The fact's usable prompts as (template index, encoding), and a reason for every unusable one."""
    usable, skipped = [], []
    for t, template in enumerate(templates):
        try:
            usable.append((t, adapter.encode(template, fact["subject"], fact["object"])))
        except MultiTokenObject as err:  # the same for every template: report once, for the fact
            return [], [_skip(fact, None, f"multi-token object: {err}")]
        except UnusablePrompt as err:
            skipped.append(_skip(fact, t, str(err)))
    return usable, skipped


def _skip(fact: Mapping, template_id: int | None, reason: str) -> dict:
    return {"fact_id": fact["fact_id"], "relation": fact["relation"], "template_id": template_id, "reason": reason}


@torch.no_grad()
def predict(adapter: ModelAdapter, prompt: EncodedPrompt) -> tuple[float, int]:
    """p(answer) and the model's top-1 token at the answer position."""
    probs = adapter.logits_at(prompt.input_ids[None].to(adapter.device), prompt.answer_pos).float().softmax(-1)[0]
    return probs[prompt.target_id].item(), int(probs.argmax())


def attribute(adapter: ModelAdapter, prompts: list[EncodedPrompt], config: KNConfig) -> list[torch.Tensor]:
    """Scores [n_layers, n_neurons] of each prompt (of one fact: they share a batch) by the configured method."""
    if config.method == "ig":
        return integrated_gradients_many(adapter, prompts, config=config.ig)
    if config.method == "activation":
        return [activation_attribution(adapter, p) for p in prompts]
    raise ValueError(f"unknown method {config.method!r} (use 'ig' or 'activation')")


def find_knowledge_neurons(
    adapter: ModelAdapter,
    facts: Iterable[Mapping],
    relations: Mapping[str, Relation],
    config: KNConfig = KNConfig(),
    progress: bool = True,
) -> KNResult:
    """Run the paper's pipeline on ``facts`` (rows with fact_id, relation, subject, object)."""
    facts, relations = as_facts(facts), as_relations(relations)
    prompt_rows, coarse_rows, skipped = [], [], []
    coarse_sets: dict[str, dict[str, list[set]]] = {}
    for fact in tqdm(facts, desc=f"{config.method} attribution", unit="fact", disable=not progress):
        if fact["relation"] not in relations:
            raise ValueError(f"fact {fact['fact_id']}: relation {fact['relation']} not in the given relations")
        usable, why = encode_fact(adapter, fact, relations[fact["relation"]].templates)
        skipped += why
        if not usable:
            if not why:
                skipped.append(_skip(fact, None, "no usable prompt"))
            continue
        sets = coarse_sets.setdefault(fact["relation"], {}).setdefault(fact["fact_id"], [])
        all_scores = attribute(adapter, [prompt for _, prompt in usable], config)
        for (t, prompt), scores in zip(usable, all_scores):
            p_answer, top1 = predict(adapter, prompt)
            prompt_rows.append(
                {"fact_id": fact["fact_id"], "relation": fact["relation"], "template_id": t, "text": prompt.text,
                 "p_answer": p_answer, "correct": top1 == prompt.target_id,
                 "predicted": adapter.tokenizer.decode([top1])}
            )
            coarse = coarse_neurons(scores, config.coarse_threshold)
            sets.append(coarse)
            coarse_rows += [
                {"fact_id": fact["fact_id"], "relation": fact["relation"], "template_id": t, "layer": layer,
                 "neuron": neuron, "score": float(scores[layer, neuron])}
                for layer, neuron in sorted(coarse)
            ]
    refined_rows, threshold_rows = [], []
    for relation, by_fact in coarse_sets.items():
        refined, threshold = refine_coarse(relation, by_fact, config)
        refined_rows += refined
        threshold_rows.append(threshold)
    tag = {"model": adapter.name, "method": config.method}
    return KNResult(
        prompts=_table(prompt_rows, tag, ["fact_id", "relation", "template_id", "text", "p_answer", "correct", "predicted"]),
        coarse=_table(coarse_rows, tag, ["fact_id", "relation", "template_id", "layer", "neuron", "score"]),
        refined=_table(refined_rows, tag, ["fact_id", "relation", "layer", "neuron", "share", "p"]),
        thresholds=_table(threshold_rows, tag | config.as_row(), THRESHOLD_COLUMNS),
        skipped=_table(skipped, tag, ["fact_id", "relation", "template_id", "reason"]),
    )


THRESHOLD_COLUMNS = ["relation", "p", "mean_count", "converged", "reason", "n_facts", "n_facts_few_prompts", "share_rule"]


def refine_coarse(relation: str, by_fact: Mapping[str, list[set[Neuron]]], config: KNConfig) -> tuple[list[dict], dict]:
    """Refinement of one relation from its facts' coarse sets: the relation's p (adaptive search) and the
    refined rows of each fact, plus the relation's threshold row. The row says how many facts had fewer
    usable prompts than the official rule's minimum count (they cannot have knowledge neurons under it:
    causal models lose the templates where [Y] precedes [X])."""
    search = adaptive_share_threshold(by_fact, config.p_start, config.p_step, config.kn_low, config.kn_high,
                                      config.share_rule, config.max_evaluations, config.min_count)
    few = sum(0 < len(sets) < config.min_count for sets in by_fact.values()) if config.share_rule == "official" else 0
    threshold = {"relation": relation, "p": search.p, "mean_count": search.mean_count, "converged": search.converged,
                 "reason": search.reason, "n_facts": len(by_fact), "n_facts_few_prompts": few, "share_rule": config.share_rule}
    refined = []
    for fact_id, sets in by_fact.items():
        shares = neuron_shares(sets)
        refined += [
            {"fact_id": fact_id, "relation": relation, "layer": layer, "neuron": neuron, "share": shares[(layer, neuron)], "p": search.p}
            for layer, neuron in sorted(refine_fact(sets, search.p, config.share_rule, config.min_count))
        ]
    return refined, threshold


def _table(rows: list[dict], tag: dict, columns: list[str]) -> pd.DataFrame:
    frame = pd.DataFrame(rows, columns=columns)
    for key, value in tag.items():
        frame[key] = value
    return frame


def target_coverage(adapter: ModelAdapter, facts: Iterable[Mapping]) -> pd.DataFrame:
    """Per relation: how many facts have a single-token answer for this model (the paper's filter)."""
    rows = []
    for fact in facts:
        try:
            adapter.answer_token(fact["object"])
            ok = True
        except MultiTokenObject:
            ok = False
        rows.append({"relation": fact["relation"], "single_token": ok})
    frame = pd.DataFrame(rows, columns=["relation", "single_token"])
    out = frame.groupby("relation")["single_token"].agg(facts="size", single_token="sum").reset_index()
    out["coverage"] = out["single_token"] / out["facts"]
    out["model"] = adapter.name
    return out
