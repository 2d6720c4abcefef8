"""Erasing relations by zeroing knowledge neurons' value slots (Dai et al. 2022, section 5.2: Table 5).

For each relation to erase: take the ``top_k`` (20) knowledge neurons found in the most facts of the
relation, set their value slots to the zero vector (``interventions.erased_value_slots``), and compare the
perplexity of the correct answers (``evaluation.perplexity``) before and after, on the prompts of the
erased relation and on the prompts of the other relations; top-1 accuracy is reported too, as the
official ``7_erase_knowledge.py`` does. The weights are restored exactly after each relation.

The paper erases P19 (place of birth), P27 (country of citizenship), P106 (occupation) and P937 (work
location), the default here.

Choices the text leaves open, official (``7_erase_knowledge.py``) by default, ours as named variants:

* ``ties="first"``: the 20 most frequent neurons as ``Counter.most_common`` orders them, ties to the
  neuron seen first in bag order (``neuron_sets.most_frequent``; the refined table must then list each
  relation's facts in data order and each bag in ``neuron_sets.official_bag_order``); ``"index"``: ties
  to the lower (layer, index);
* ``erased_facts="all"``: the erased relation is measured on *every* fact of it in ``population`` (the
  official script evaluates the whole relation), not only on the analysed sample (``"sample"``);
* other relations: the official script evaluates every fact of the 33 others. ``max_other_facts``
  (None: all of them) draws a seeded uniform sample of them instead, per erased relation; the book
  states the sample's size and the interval it leaves.

Matched controls (``control``, beyond the paper): the same erasure of as many neurons, each a non-knowledge
neuron of the relation in the layer of one of the top neurons: ``random-layer`` draws it at random
(seeded per relation), ``activation-matched`` takes the one closest in mean activation magnitude over
the relation's analysed prompts (``controls.py``). The measured prompts are the same.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable, Iterable, Literal, Mapping

import pandas as pd

from ..adapters import ModelAdapter
from ..data import Relation
from .evaluation import FactPrompts, Prompt, SkipLog, answer_readouts, perplexity, seeded_rng, tag_of
from .interventions import edited_value_slots, erased_value_slots
from .controls import CONTROLS, matched_neurons, mean_answer_activations
from .neuron_sets import check_refined, data_order, most_frequent, neurons_by_fact

PAPER_RELATIONS = ("P19", "P27", "P106", "P937")


@dataclass(frozen=True)
class EraseConfig:
    relations: tuple[str, ...] = PAPER_RELATIONS
    top_k: int = 20  # paper: the 20 most frequent knowledge neurons of the relation
    max_other_facts: int | None = None  # None: every fact of the other relations
    seed: int = 0  # draws the sample of other facts when max_other_facts is set
    ties: Literal["first", "index"] = "first"  # official: Counter.most_common order; "index": ours before
    erased_facts: Literal["all", "sample"] = "all"  # official: every fact of the erased relation

    def __post_init__(self) -> None:
        if self.ties not in ("first", "index"):
            raise ValueError(f"ties must be 'first' or 'index', got {self.ties!r}")
        if self.erased_facts not in ("all", "sample"):
            raise ValueError(f"erased_facts must be 'all' or 'sample', got {self.erased_facts!r}")
        if self.max_other_facts is not None and self.max_other_facts < 1:
            raise ValueError(f"max_other_facts must be >= 1 or None, got {self.max_other_facts}")


@dataclass(frozen=True)
class EraseSummary:
    """Means over the erased relations of the perplexity changes, in percent (Table 5 per relation is
    ``EraseResult.by_relation``)."""

    model: str
    method: str
    n_relations: int
    erased_ppl_change: float  # paper, per relation: +106.6 %, +36.7 %, +128.2 %, +141.2 %
    other_ppl_change: float  # paper: +1.1 %, +4.2 %, +4.3 %, +10.1 %
    top_k: int
    seed: int


@dataclass(frozen=True)
class ErasedRelation:
    """One erased relation's rows of ``EraseResult.table`` and ``EraseResult.neurons``: the unit a long
    run saves as it goes (``on_relation``) and resumes from (``resume``)."""

    rows: pd.DataFrame
    neurons: pd.DataFrame


@dataclass
class EraseResult:
    table: pd.DataFrame  # one row per (erased relation, evaluated prompt): p and top-1 before / after
    by_relation: pd.DataFrame  # Table 5: one row per erased relation
    neurons: pd.DataFrame  # the erased neurons: relation, layer, neuron, n_facts
    summary: EraseSummary
    skipped: pd.DataFrame
    config: EraseConfig


TABLE_COLUMNS = ["erased_relation", "scope", "fact_id", "relation", "template_id", "p_before", "p_after",
                 "correct_before", "correct_after", "flip", "in_sample"]
NEURON_COLUMNS = ["relation", "layer", "neuron", "n_facts"]


def _stacked(frames: list[pd.DataFrame], columns: list[str]) -> pd.DataFrame:
    """The erased relations' rows, one frame each, in the order they were erased."""
    frames = [f[columns] for f in frames if len(f)]
    return pd.concat(frames, ignore_index=True) if frames else pd.DataFrame(columns=columns)


def _evaluate(adapter: ModelAdapter, prompts: list[Prompt]) -> list[tuple[float, bool]]:
    """(p(correct answer), top-1 correct) of each prompt, batched (``answer_readouts``)."""
    reads = answer_readouts(adapter, [p.encoded for p in prompts])
    return [(r.p, r.top1 == p.encoded.target_id) for r, p in zip(reads, prompts)]


def answers_lost(table: pd.DataFrame) -> pd.Series:
    """Per evaluated prompt, whether the erasure changed its prediction: answered top-1 before, not after
    (``flip``). Tables stored before the column existed give it from their ``correct_before`` and
    ``correct_after``, the same definition."""
    if "flip" in table:
        return table["flip"].astype(bool)
    return table["correct_before"].astype(bool) & ~table["correct_after"].astype(bool)


def table5(table: pd.DataFrame, neurons: pd.DataFrame) -> pd.DataFrame:
    """Table 5: per erased relation, perplexity (and accuracy) of its prompts and of the other relations'
    prompts, before and after erasing, with the change in percent, 100 * (after - before) / before; and
    (beyond the paper) ``flip_rate``: the percentage of the prompts answered top-1 before whose answer the
    erasure took away (``answers_lost``; NaN where none was answered)."""
    rows = []
    for relation, group in table.groupby("erased_relation", sort=False):
        row = {"relation": relation, "n_neurons": int((neurons["relation"] == relation).sum())}
        for scope in ("erased", "other"):
            sel = group[group["scope"] == scope]
            ppl_before, ppl_after = perplexity(sel["p_before"].tolist()), perplexity(sel["p_after"].tolist())
            n_correct = int(sel["correct_before"].astype(bool).sum())
            row |= {f"{scope}_n_prompts": len(sel), f"{scope}_ppl_before": ppl_before, f"{scope}_ppl_after": ppl_after,
                    f"{scope}_ppl_change": (ppl_after - ppl_before) / ppl_before * 100,
                    f"{scope}_accuracy_before": sel["correct_before"].mean(), f"{scope}_accuracy_after": sel["correct_after"].mean(),
                    f"{scope}_flip_rate": 100 * int(answers_lost(sel).sum()) / n_correct if n_correct else float("nan")}
        rows.append(row)
    return pd.DataFrame(rows, columns=["relation", "n_neurons"] + [
        f"{scope}_{key}" for scope in ("erased", "other")
        for key in ("n_prompts", "ppl_before", "ppl_after", "ppl_change", "accuracy_before", "accuracy_after", "flip_rate")
    ])


def erase_relations(
    adapter: ModelAdapter,
    refined: pd.DataFrame,
    facts: Iterable[Mapping],
    relations: Mapping[str, Relation],
    config: EraseConfig = EraseConfig(),
    population: Iterable[Mapping] | None = None,
    control: str | None = None,
    progress: Callable[[int], object] | None = None,
    resume: Mapping[str, ErasedRelation] | None = None,
    on_relation: Callable[[str, ErasedRelation], object] | None = None,
    before: Mapping[tuple[str, int], tuple[float, bool]] | Callable[[], Mapping] | None = None,
) -> EraseResult:
    """Table 5 for one refined table (or, with ``control``, for its matched control: module docstring). ``facts`` are the analysed sample (whose knowledge neurons are
    counted); ``population`` (default: ``facts``) the facts perplexity is measured on: every fact of the
    erased relation (``erased_facts="all"``) and the other relations' facts (or ``max_other_facts`` of
    them); ``relations`` must hold the templates of every relation in it.

    Long runs: ``on_relation`` gets each erased relation's rows as soon as they are measured, and a rerun
    given them as ``resume`` takes them instead of measuring again (every draw is seeded per relation, so
    the result is the same). ``before``: (p(answer), top-1 correct) of unedited prompts already measured,
    by (fact id, template id), e.g. by the knowledge neurons' run for its controls; the rest is measured. A
    callable ``before`` is asked again whenever a relation has prompts it lacks: a control run beside the
    knowledge neurons' run takes the relations that run saved since it started."""
    check_refined(refined)
    if control is not None and control not in CONTROLS:
        raise ValueError(f"control must be one of {', '.join(CONTROLS)} or None, got {control!r}")
    skips = SkipLog("erase_relations")
    facts = list(facts)
    population = facts if population is None else list(population)
    sample_ids = {f["fact_id"] for f in facts}
    known = {f["fact_id"] for f in population}
    prompts = FactPrompts(adapter, population + [f for f in facts if f["fact_id"] not in known], relations, skips)
    # the official tie order reads each bag in the refined table's row order (``official_bag_order``)
    kns = neurons_by_fact(refined, ordered=config.ties == "first")
    groups = prompts.by_relation()
    sample_groups = {r: [f for f in ids if f in sample_ids] for r, ids in groups.items()}
    refresh = before if callable(before) else None
    before = dict(refresh() if refresh is not None else before or {})  # shared by every erased relation
    erased: list[ErasedRelation] = []  # measured now or resumed, in config.relations' order
    resume = resume or {}
    for relation in config.relations:
        ids = sample_groups.get(relation, [])
        if relation in resume:
            erased.append(resume[relation])
            if progress is not None:
                progress(len(ids))
            continue
        chosen = most_frequent([kns[f] for f in _in_bag_order(ids, kns, config.ties)], config.top_k, config.ties)
        if not chosen:
            skips.add("relation without knowledge neurons" if ids else "no facts of this relation given", relation)
            continue
        measured = groups.get(relation, []) if config.erased_facts == "all" else ids
        own = [p for f in measured for p in prompts.of(f)]
        other_ids = [f for r, fs in groups.items() if r != relation for f in fs]
        if config.max_other_facts is not None and len(other_ids) > config.max_other_facts:
            other_ids = seeded_rng(config.seed, relation).sample(other_ids, config.max_other_facts)
        other = [p for f in other_ids for p in prompts.of(f)]
        if not own or not other:
            skips.add(f"no prompts of {'the relation' if not own else 'other relations'} to measure perplexity on", relation)
            continue
        todo = [p for p in own + other if (p.fact_id, p.template_id) not in before]
        if todo and refresh is not None:
            before.update(refresh())
            todo = [p for p in todo if (p.fact_id, p.template_id) not in before]
        before.update({(p.fact_id, p.template_id): r for p, r in zip(todo, _evaluate(adapter, todo))})
        neurons = [n for n, _ in chosen]
        if control is not None:
            neurons = _matched(adapter, control, relation, neurons, ids, kns, prompts, config.seed)
            chosen = [(m, c) for m, (_, c) in zip(neurons, chosen)]  # n_facts: of the top neuron it stands for
        with edited_value_slots(adapter, erased_value_slots(adapter, neurons)):
            after = _evaluate(adapter, own + other)
        new_neurons = [{"relation": relation, "layer": n[0], "neuron": n[1], "n_facts": c} for n, c in chosen]
        new_rows = []
        for p, (p_after, ok_after), scope in zip(own + other, after, ["erased"] * len(own) + ["other"] * len(other)):
            p_before, ok_before = before[(p.fact_id, p.template_id)]
            new_rows.append({"erased_relation": relation, "scope": scope, "fact_id": p.fact_id, "relation": p.relation,
                             "template_id": p.template_id, "p_before": float(p_before), "p_after": p_after,
                             "correct_before": bool(ok_before), "correct_after": ok_after,
                             "flip": bool(ok_before) and not ok_after, "in_sample": p.fact_id in sample_ids})
        erased.append(ErasedRelation(pd.DataFrame(new_rows, columns=TABLE_COLUMNS),
                                     pd.DataFrame(new_neurons, columns=NEURON_COLUMNS)))
        if on_relation is not None:
            on_relation(relation, erased[-1])
        if progress is not None:
            progress(len(ids))  # the erased relation's analysed facts are done
    skips.rows = [r for r in skips.rows if r["fact_id"] is None or r["fact_id"] in sample_ids]  # not the population's
    table = _stacked([e.rows for e in erased], TABLE_COLUMNS)
    neurons_frame = _stacked([e.neurons for e in erased], NEURON_COLUMNS)
    by_relation = table5(table, neurons_frame)
    tag = tag_of(refined) | ({"method": control} if control else {})
    summary = EraseSummary(
        model=tag["model"], method=tag["method"], n_relations=len(by_relation),
        erased_ppl_change=float(by_relation["erased_ppl_change"].mean()) if len(by_relation) else float("nan"),
        other_ppl_change=float(by_relation["other_ppl_change"].mean()) if len(by_relation) else float("nan"),
        top_k=config.top_k, seed=config.seed,
    )
    for frame in (table, by_relation, neurons_frame):
        frame["model"], frame["method"], frame["seed"] = tag["model"], tag["method"], config.seed
    return EraseResult(table, by_relation, neurons_frame, summary, skips.frame(), config)



def _matched(adapter: ModelAdapter, control: str, relation: str, neurons: list, ids: list[str], kns: Mapping[str, list],
             prompts: FactPrompts, seed: int) -> list:
    """The control of a relation's top neurons: same layers, none a knowledge neuron of the relation's facts."""
    everything = {n for f in ids for n in kns.get(f, ())}
    return matched_neurons(control, neurons, adapter.n_neurons, everything, lambda: seeded_rng(seed, f"random-layer/{relation}"),
                           lambda: mean_answer_activations(adapter, prompts, ids))


def _in_bag_order(ids: list[str], kns: Mapping[str, list], ties: str) -> list[str]:
    """The relation's facts with knowledge neurons: in data order (``neuron_sets.data_order``) for the
    official tie order, as given otherwise."""
    with_kn = [f for f in ids if f in kns]
    return with_kn if ties == "index" else sorted(with_kn, key=data_order)
