"""Updating facts by editing knowledge neurons' value slots (Dai et al. 2022, section 5.1: Table 6).

Per relation, facts are drawn at random (seeded) until ``facts_per_relation`` are edited. For each fact
<h, r, t>:

1. keep its knowledge neurons shared by fewer than ``max_share`` (10 %) of the relation's other
   searched facts;
2. draw one of its prompts at random; if the model's top-1 answer to it is not t, the fact is not
   "learned" and is skipped;
3. draw the new answer t' as the object of a random other fact of the relation whose object differs
   (so frequent objects come up more often), single-token for the model;
4. edit those neurons' value slots (``interventions.updated_value_slots``: -lambda1 t + lambda2 t');
5. read the edited prompt's top-1 prediction: *changed* if it is no longer t, *success* if it is t';
6. perplexity of the correct answers of ``intra_facts`` other facts of the relation and of
   ``inter_facts`` facts of other relations, before and after (``evaluation.perplexity``);
7. beyond the paper: the top-1 answer of the fact's *other* prompts (its PARAREL paraphrases) after
   the edit (does the edit generalise?), and of the intra-relation prompts (is it specific, or does
   every fact of the relation now answer t'?);
8. restore the weights exactly, and repeat 4-7 on the controls: as many random neurons over all layers
   (``random``, the paper's control), and the matched controls of ``controls.py`` (``random-layer``: a
   random neuron of the same layer for each edited neuron; ``activation-matched``: the same-layer neuron
   closest in mean activation over the fact's prompts), none of them a knowledge neuron of the fact.

Choices the paper leaves open. Defaults follow the official ``6_edit_knowledge_sampled.py``; the
reading this module had before is kept as named variants (``selection="ours"``, ``sampling="ours"``):

* **which neurons** (``select_kn``, ``official_exclusive_neurons``): every neuron of the fact's bag starts
  at count 1 and gains 1 for every bag of the relation holding it, the fact's own included; it is dropped
  when its count exceeds 0.1 x the number of bags. The bags are every fact of the relation whose neurons
  were searched (``bags``: the largest set the results store holds, empty bags included), so with fewer
  than 20 bags no neuron survives and nothing is edited. Ours: a neuron is kept when fewer than 10 % of
  the relation's *other* searched facts hold it (``exclusive_neurons``);
* **sampling** (official): per relation, draw a fact of the analysed sample *with replacement*, then t'
  as the object of a random fact among *all* the relation's facts (``population``) whose object differs,
  redrawn until it is one token for the model (PARAREL objects are single BERT tokens); then skip the
  draw on ``no_kn`` (no neuron survives) or ``incorrect_answer`` (the model's top-1 on one drawn prompt is
  not t), until exactly ``facts_per_relation`` (10) edits are done or ``max_draws`` draws are spent.
  Intra-relation perplexity: 5 facts drawn with replacement from all the relation's facts other than the
  edited one; inter: 5 draws of (another relation, then one of its facts) over all facts. Ours: facts
  without replacement, t' and the perplexity facts from the analysed sample only;
* Delta PPL (Table 6) as the official script averages: per edit the mean log perplexity of its prompts,
  then the mean over edits, exponentiated, after minus before (``delta_ppl``). From float32
  probabilities a single answer probability that underflows to 0 makes it infinite; the summary
  therefore also gives it from log-probabilities (``*_logspace``, finite) and the median over edits.

``sign_aware=True`` (off by default; not in the paper) flips the edit of neurons whose activation on the
edited prompt is negative, which gated FFNs (SwiGLU, as in SmolLM2) produce; see
``interventions.updated_value_slots``.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Callable, Iterable, Iterator, Literal, Mapping

import numpy as np
import pandas as pd

from ..adapters import ModelAdapter
from ..data import Relation
from .evaluation import (
    SKIP_COLUMNS, FactPrompts, Prompt, SkipLog, answer_distribution, answer_readouts, log_perplexity, perplexity, seeded_rng, tag_of,
)
from .interventions import edited_value_slots, updated_value_slots
from .controls import ALL_CONTROLS, CONTROLS, base_kind, matched_neurons, mean_answer_activations
from .neuron_sets import check_refined, neurons_by_fact, random_neurons


TABLE_COLUMNS = [
    "edit", "fact_id", "relation", "neuron_set", "n_neurons", "neurons", "template_id", "text", "old_object", "new_object",
    "top1_before", "top1_after", "changed", "success", "p_old_before", "p_old_after", "p_new_before", "p_new_after",
    "ppl_intra_before", "ppl_intra_after", "ppl_inter_before", "ppl_inter_after", "sign_aware", "n_bags", "n_fact_kns",
]


@dataclass(frozen=True)
class UpdateConfig:
    facts_per_relation: int = 10  # paper: ten facts per relation
    max_share: float = 0.1  # keep neurons shared by fewer than 10 % of the relation's other facts
    lambda1: float = 1.0  # paper: 1
    lambda2: float = 8.0  # paper: 8
    intra_facts: int = 5  # other facts of the relation whose prompts measure Delta intra-relation PPL
    inter_facts: int = 5  # facts of other relations for Delta inter-relation PPL
    random_control: bool = True  # repeat every edit on as many random neurons
    # not in the paper: flip each neuron's edit where its activation on the edited prompt is negative
    # (gated FFNs such as SmolLM2's SwiGLU; see interventions.updated_value_slots)
    sign_aware: bool = False
    seed: int = 0
    selection: Literal["official", "ours"] = "official"  # which of the fact's neurons are edited (module doc)
    sampling: Literal["official", "ours"] = "official"  # how facts, t' and perplexity facts are drawn
    max_draws: int = 10000  # official: at most 10000 draws per relation
    controls: tuple[str, ...] = CONTROLS  # matched controls each edit is repeated on (besides ``random``)

    def __post_init__(self) -> None:
        for name in ("selection", "sampling"):
            if getattr(self, name) not in ("official", "ours"):
                raise ValueError(f"{name} must be 'official' or 'ours', got {getattr(self, name)!r}")
        unknown = [c for c in self.controls if c not in ALL_CONTROLS]
        if unknown:
            raise ValueError(f"unknown control(s) {unknown}; expected some of {', '.join(ALL_CONTROLS)}")
        if self.facts_per_relation < 1 or self.max_draws < 1:
            raise ValueError("facts_per_relation and max_draws must be >= 1")


@dataclass(frozen=True)
class UpdateSummary:
    """Table 6, one per neuron set."""

    model: str
    method: str
    neuron_set: str  # "knowledge", "random" (uniform over layers), "random-layer" or "activation-matched"
    n_edits: int
    change_rate: float  # paper: 48.5 % (knowledge neurons), 4.7 % (random)
    success_rate: float  # paper: 34.4 % / 0.0 %
    delta_intra_ppl: float  # paper: 8.4 / 10.1 (official averaging; inf when a float32 probability underflows)
    delta_inter_ppl: float  # paper: 7.2 / 4.3
    # beyond the paper: the fact's other paraphrases, and other facts of the relation (top-1 answers)
    paraphrase_change_rate: float  # % of the other prompts whose top-1 is no longer the old answer
    paraphrase_success_rate: float  # % of the other prompts whose top-1 is now the new answer
    intra_changed_rate: float  # % of intra-relation prompts whose top-1 answer changed
    intra_new_rate: float  # % of intra-relation prompts now answering the edit's new object
    seed: int
    # the same Delta PPL from log-probabilities (finite), and the median over edits of each edit's Delta PPL
    delta_intra_ppl_logspace: float = float("nan")
    delta_inter_ppl_logspace: float = float("nan")
    delta_intra_ppl_median: float = float("nan")
    delta_inter_ppl_median: float = float("nan")


@dataclass
class UpdateResult:
    table: pd.DataFrame  # one row per (edited fact, neuron set)
    ppl_prompts: pd.DataFrame  # one row per (edit, neuron set, evaluated prompt): p and top-1 before / after
    paraphrases: pd.DataFrame  # one row per (edit, neuron set, other prompt of the edited fact)
    summary: list[UpdateSummary]
    skipped: pd.DataFrame
    config: UpdateConfig


@dataclass(frozen=True)
class PlannedEdit:
    """One fact's edit: the prompt it is judged on, old and new answers, neurons, and the PPL prompts."""

    prompt: Prompt
    old_id: int
    new_id: int
    new_object: str
    neurons: list
    intra: list[Prompt]  # prompts of other facts of the relation
    inter: list[Prompt]  # prompts of facts of other relations


def exclusive_neurons(fact_id: str, kns: Mapping[str, list], relation_facts: list[str], max_share: float) -> list:
    """The fact's knowledge neurons found in fewer than ``max_share`` of the relation's other facts."""
    others = [f for f in relation_facts if f != fact_id]
    keep = []
    for neuron in kns.get(fact_id, []):
        shared = sum(neuron in kns.get(f, ()) for f in others)
        if not others or shared < max_share * len(others):
            keep.append(neuron)
    return keep


def official_exclusive_neurons(bag: list, bags: list[list]) -> list:
    r"""``select_kn`` of the official ``6_edit_knowledge_sampled.py``: the neurons n of ``bag`` with

        c(n) = 1 + #{b in bags : n in b}  <=  0.1 |bags|,

    where ``bags`` are all the relation's searched facts' bags, the edited fact's own included (so a
    neuron of the fact has c >= 2, and with fewer than 20 bags nothing is kept). Order of ``bag`` kept."""
    limit = 0.1 * len(bags)
    sets = [set(map(tuple, b)) for b in bags]
    return [n for n in bag if 1 + sum(tuple(n) in b for b in sets) <= limit]


def _p_top1(adapter: ModelAdapter, prompts: list[Prompt]) -> tuple[list[float], list[int], list[float]]:
    """p(correct answer), the top-1 token and log p(correct answer) (log-softmax) of each prompt, as the
    model is now (batched: equal to one at a time up to float rounding)."""
    reads = answer_readouts(adapter, [p.encoded for p in prompts])
    return [r.p for r in reads], [r.top1 for r in reads], [r.log_p for r in reads]


def update_facts(
    adapter: ModelAdapter,
    refined: pd.DataFrame,
    facts: Iterable[Mapping],
    relations: Mapping[str, Relation],
    config: UpdateConfig = UpdateConfig(),
    searched: pd.DataFrame | None = None,
    population: Iterable[Mapping] | None = None,
    bags: Mapping[str, Mapping[str, list]] | None = None,
    progress: Callable[[int], object] | None = None,
    resume: Mapping[str, Mapping[str, pd.DataFrame]] | None = None,
    on_relation: Callable[[str, Mapping[str, pd.DataFrame]], object] | None = None,
    edit_templates: Mapping[str, Iterable[int]] | None = None,
    avoid: Iterable[tuple[int, int]] = (),
) -> UpdateResult:
    """Table 6 for one refined table; ``facts`` are the analysed sample whose facts are edited.

    ``searched`` (fact_id, relation: every fact whose knowledge neurons were searched, with or without
    any) is the population over which ``selection="ours"`` measures a neuron's share; default: the given
    facts. ``population`` (default: ``facts``): every fact the official sampling draws t' and the
    perplexity facts from; ``relations`` must hold its relations' templates. ``bags`` (relation -> fact ->
    neurons, empty bags included; default: the sample's own bags) are what the official ``select_kn``
    counts over.

    Long runs: ``on_relation`` gets each relation's tables (``table``, ``ppl_prompts``, ``paraphrases``,
    ``skipped``) as soon as its edits are measured, and a rerun given them as ``resume`` takes them instead
    of editing again: every draw is seeded per relation and per edit number, and a resumed relation
    advances the edit number by its edits, so the result equals one uninterrupted run.

    Held-out prompts (``run.held_out_stage``): ``edit_templates`` (fact -> template ids) limits the prompt
    each edit is drawn and judged on to those (a fact's selection half), so its other prompts include a
    half the neurons were never chosen on; ``avoid`` adds neurons no non-KN control may use besides the
    sample's knowledge neurons (those of other refinements)."""
    check_refined(refined)
    skips = SkipLog("update_facts")
    facts = list(facts)
    sample_ids = {f["fact_id"] for f in facts}
    pool = facts if population is None else list(population)
    pool_ids = {f["fact_id"] for f in pool}
    prompts = FactPrompts(adapter, pool + [f for f in facts if f["fact_id"] not in pool_ids], relations, skips)
    kns = neurons_by_fact(refined)
    sample_kns = {tuple(n) for ns in kns.values() for n in ns} | {tuple(n) for n in avoid}  # what a non-KN control never uses

    def editable(fact_id: str) -> list[Prompt]:  # the prompts an edit of the fact may be judged on
        own = prompts.of(fact_id)
        if edit_templates is None:
            return own
        allowed = {int(t) for t in edit_templates.get(fact_id, ())}
        return [p for p in own if p.template_id in allowed]
    everything = prompts.by_relation()
    groups = {r: [f for f in ids if f in sample_ids] for r, ids in everything.items()}
    groups = {r: ids for r, ids in groups.items() if ids}
    if bags is None:
        bags = {r: {f: kns.get(f, []) for f in ids} for r, ids in groups.items()}
    population_ids = groups if searched is None else {
        r: sorted(set(g["fact_id"]) | set(groups.get(r, ()))) for r, g in searched.groupby("relation")
    }
    parts: list[dict[str, pd.DataFrame]] = []  # each relation's tables, measured now or resumed
    resume = resume or {}
    mean_acts: dict[str, object] = {}  # fact -> mean answer-position activations (activation-matched control)
    n_edit = 0
    for relation, ids in groups.items():
        if relation in resume:
            part = {name: _as_lists(frame) for name, frame in resume[relation].items()}
            parts.append(part)
            n_edit += int(part["table"]["edit"].nunique()) if len(part["table"]) else 0
            skips.rows += [{k: (None if isinstance(v, float) and math.isnan(v) else v) for k, v in r.items()}
                           for r in part["skipped"].to_dict("records")]
            if progress is not None:
                progress(len(ids))
            continue
        rows, ppl_rows, para_rows, first_skip = [], [], [], len(skips.rows)
        rng = seeded_rng(config.seed, relation)
        if not any(f in kns for f in ids):
            skips.add("relation without knowledge neurons", relation)
            continue
        if config.sampling == "official":
            plans = _official_plans(adapter, relation, ids, everything, prompts, kns, bags.get(relation, {}), config, rng, skips,
                                    editable)
        else:
            plans = _ours_plans(adapter, relation, ids, population_ids.get(relation, ids), groups, prompts, kns, bags.get(relation, {}),
                                config, rng, skips, editable)
        done = 0
        for fact_id, edit in plans:
            done += 1
            n_edit += 1
            prompt, old_id, new_id, neurons, intra, inter = edit.prompt, edit.old_id, edit.new_id, edit.neurons, edit.intra, edit.inter
            before = answer_distribution(adapter, prompt.encoded)
            (p_intra, t_intra, l_intra), (p_inter, t_inter, l_inter) = _p_top1(adapter, intra), _p_top1(adapter, inter)
            paraphrases = [p for p in prompts.of(fact_id) if p.template_id != prompt.template_id]
            _, t_para, _ = _p_top1(adapter, paraphrases)
            sets = [("knowledge", neurons)]
            if config.random_control:
                sets.append(("random", random_neurons(len(neurons), adapter.n_layers, adapter.n_neurons, rng, kns[fact_id])))
            sets += _matched_controls(adapter, fact_id, neurons, kns[fact_id], prompts, config, n_edit, mean_acts, sample_kns,
                                      prompt)
            acts = adapter.activations(prompt.encoded) if config.sign_aware else None
            for name, chosen in sets:
                signs = {n: 1.0 if acts[n] >= 0 else -1.0 for n in chosen} if acts is not None else None
                slots = updated_value_slots(adapter, chosen, old_id, new_id, config.lambda1, config.lambda2, signs)
                with edited_value_slots(adapter, slots):
                    after = answer_distribution(adapter, prompt.encoded)
                    (q_intra, u_intra, m_intra), (q_inter, u_inter, m_inter) = _p_top1(adapter, intra), _p_top1(adapter, inter)
                    _, u_para, _ = _p_top1(adapter, paraphrases)
                top1 = int(after.argmax())
                rows.append(
                    {"edit": n_edit, "fact_id": fact_id, "relation": relation, "neuron_set": name, "n_neurons": len(chosen),
                     "neurons": [list(n) for n in chosen], "template_id": prompt.template_id, "text": prompt.encoded.text,
                     "old_object": prompts.facts[fact_id]["object"], "new_object": edit.new_object,
                     "top1_before": adapter.tokenizer.decode([int(before.argmax())]), "top1_after": adapter.tokenizer.decode([top1]),
                     "changed": top1 != old_id, "success": top1 == new_id,
                     "p_old_before": before[old_id].item(), "p_old_after": after[old_id].item(),
                     "p_new_before": before[new_id].item(), "p_new_after": after[new_id].item(),
                     "ppl_intra_before": perplexity(p_intra), "ppl_intra_after": perplexity(q_intra),
                     "ppl_inter_before": perplexity(p_inter), "ppl_inter_after": perplexity(q_inter),
                     "sign_aware": config.sign_aware, "n_bags": len(bags.get(relation, {})), "n_fact_kns": len(kns.get(fact_id, ()))}
                )
                for scope, group, ps, qs, ts, us, ls, ms in (
                    ("intra", intra, p_intra, q_intra, t_intra, u_intra, l_intra, m_intra),
                    ("inter", inter, p_inter, q_inter, t_inter, u_inter, l_inter, m_inter),
                ):
                    ppl_rows += [
                        {"edit": n_edit, "fact_id": fact_id, "neuron_set": name, "scope": scope, "eval_fact_id": p.fact_id,
                         "template_id": p.template_id, "p_before": a, "p_after": b, "top1_changed": t != u,
                         "correct_before": t == p.encoded.target_id, "correct_after": u == p.encoded.target_id,
                         "new_after": u == new_id, "logp_before": la, "logp_after": lb}
                        for p, a, b, t, u, la, lb in zip(group, ps, qs, ts, us, ls, ms)
                    ]
                para_rows += [
                    {"edit": n_edit, "fact_id": fact_id, "neuron_set": name, "template_id": p.template_id,
                     "correct_before": t == old_id, "changed": u != old_id, "success": u == new_id}
                    for p, t, u in zip(paraphrases, t_para, u_para)
                ]
        if done < config.facts_per_relation:
            skips.add(f"only {done} of {config.facts_per_relation} facts could be edited", relation)
        part = {"table": pd.DataFrame(rows, columns=TABLE_COLUMNS), "ppl_prompts": pd.DataFrame(ppl_rows, columns=PPL_COLUMNS),
                "paraphrases": pd.DataFrame(para_rows, columns=PARA_COLUMNS),
                "skipped": pd.DataFrame(skips.rows[first_skip:], columns=SKIP_COLUMNS)}
        parts.append(part)
        if on_relation is not None:
            on_relation(relation, part)
        if progress is not None:
            progress(len(ids))  # a relation's facts are done
    skips.rows = [r for r in skips.rows if r["fact_id"] is None or r["fact_id"] in sample_ids]  # not the population's
    tag = tag_of(refined)

    def joined(name: str, columns: list[str]) -> pd.DataFrame:
        frames = [p[name] for p in parts if len(p[name])]
        return pd.concat(frames, ignore_index=True)[columns] if frames else pd.DataFrame(columns=columns)

    table, ppl_prompts, para = joined("table", TABLE_COLUMNS), joined("ppl_prompts", PPL_COLUMNS), joined("paraphrases", PARA_COLUMNS)
    names = ["knowledge"] + (["random"] if config.random_control else []) + list(config.controls)
    summary = [_summarise(table, ppl_prompts, para, name, tag, config.seed) for name in names]
    for frame in (table, ppl_prompts, para):
        frame["model"], frame["method"], frame["seed"] = tag["model"], tag["method"], config.seed
    return UpdateResult(table, ppl_prompts, para, summary, skips.frame(), config)


PPL_COLUMNS = ["edit", "fact_id", "neuron_set", "scope", "eval_fact_id", "template_id", "p_before", "p_after", "top1_changed",
               "correct_before", "correct_after", "new_after", "logp_before", "logp_after"]
PARA_COLUMNS = ["edit", "fact_id", "neuron_set", "template_id", "correct_before", "changed", "success"]


def _as_lists(frame: pd.DataFrame) -> pd.DataFrame:
    """A saved relation's table as measured: Parquet gives the neuron lists back as arrays."""
    if "neurons" not in frame.columns:
        return frame
    return frame.assign(neurons=[[[int(x) for x in n] for n in v] for v in frame["neurons"]])


def _matched_controls(adapter: ModelAdapter, fact_id: str, neurons: list, fact_kns: list, prompts: FactPrompts,
                      config: UpdateConfig, n_edit: int, mean_acts: dict, sample_kns: set = frozenset(),
                      prompt: Prompt | None = None) -> list[tuple[str, list]]:
    """The edit's matched control sets, none of them a knowledge neuron of the fact (a non-KN control: of
    any fact of the sample, ``sample_kns``). The activation-matched control matches the mean |activation|
    over the fact's prompts; its non-KN form the signed activation on the edited ``prompt`` itself, since
    a value-slot edit's effect scales with the signed activation there. Their draws use their own
    generator (per edit), so the edits drawn do not depend on which controls run."""
    def activations():
        if fact_id not in mean_acts:
            mean_acts[fact_id] = mean_answer_activations(adapter, prompts, [fact_id])
        return mean_acts[fact_id]

    def on_prompt():
        return adapter.activations(prompt.encoded).float() if prompt is not None else activations()

    return [(kind, matched_neurons(kind, neurons, adapter.n_neurons, fact_kns,
                                   lambda: seeded_rng(config.seed, f"random-layer/{fact_id}/{n_edit}"),
                                   on_prompt if base_kind(kind)[1] else activations, sample_kns))
            for kind in config.controls]


def official_selection(fact_id: str, kns: Mapping[str, list], bags: Mapping[str, list]) -> list:
    """``official_exclusive_neurons`` of the fact's analysed bag (``kns``), counted with every other bag
    of its relation (``bags``: fact -> neurons; the fact's own entry there is replaced by its analysed one)."""
    own = kns.get(fact_id, [])
    return official_exclusive_neurons(own, [b for f, b in bags.items() if f != fact_id] + [own])


def _selected(fact_id: str, kns: Mapping[str, list], bags: Mapping[str, list], population: list[str], config: UpdateConfig) -> list:
    """The fact's neurons an edit changes, under ``config.selection``."""
    if config.selection == "official":
        return official_selection(fact_id, kns, bags)
    return exclusive_neurons(fact_id, kns, population, config.max_share)


def _no_kn_reason(config: UpdateConfig) -> str:
    if config.selection == "official":
        return "no knowledge neuron left by the official select_kn (count over the relation's bags above 10 %)"
    return f"no knowledge neuron shared by fewer than {config.max_share:.0%} of the relation's other facts"


def _ours_plans(
    adapter: ModelAdapter, relation: str, ids: list[str], population: list[str], groups: dict[str, list[str]],
    prompts: FactPrompts, kns: dict, bags: Mapping[str, list], config: UpdateConfig, rng, skips: SkipLog,
    editable: Callable[[str], list[Prompt]],
) -> Iterator[tuple[str, PlannedEdit]]:
    """Our sampling: the sample's facts in a seeded order, each at most once, until enough are edited."""
    candidates = [f for f in ids if f in kns]
    rng.shuffle(candidates)
    done = 0
    for fact_id in candidates:
        if done == config.facts_per_relation:
            return
        edit = _plan_edit(adapter, fact_id, relation, ids, population, groups, prompts, kns, bags, config, rng, skips, editable)
        if edit is not None:
            done += 1
            yield fact_id, edit


def _official_plans(
    adapter: ModelAdapter, relation: str, ids: list[str], everything: dict[str, list[str]], prompts: FactPrompts,
    kns: dict, bags: Mapping[str, list], config: UpdateConfig, rng, skips: SkipLog, editable: Callable[[str], list[Prompt]],
) -> Iterator[tuple[str, PlannedEdit]]:
    """The official sampling (module docstring): draws with replacement until exactly
    ``facts_per_relation`` edits or ``max_draws`` draws; a skipped draw is logged once per fact and reason."""
    pool = everything.get(relation, [])
    others = sorted(r for r in everything if r != relation)
    logged: set[tuple[str, str]] = set()
    correct: dict[tuple[str, int], bool] = {}

    def skip(reason: str, fact_id: str, item: str | None = None) -> None:
        if (reason, fact_id) not in logged:
            logged.add((reason, fact_id))
            skips.add(reason, relation, fact_id, item)

    done = 0
    for _ in range(config.max_draws):
        if done == config.facts_per_relation:
            return
        fact_id = rng.choice(ids)
        old_object = prompts.facts[fact_id]["object"]
        own = editable(fact_id)
        if not own:
            skip("no usable prompt", fact_id)
            continue
        template = prompts.relations[relation].templates[own[0].template_id]
        new_object, new_id = _official_new_object(adapter, old_object, [prompts.facts[f]["object"] for f in pool], template, rng)
        if new_object is None:
            skip("no other single-token object in the relation to update to", fact_id)
            continue
        neurons = _selected(fact_id, kns, bags, [], config)
        if not neurons:
            skip(_no_kn_reason(config), fact_id)
            continue
        prompt = rng.choice(own)
        key = (fact_id, prompt.template_id)
        if key not in correct:
            correct[key] = int(answer_distribution(adapter, prompt.encoded).argmax()) == prompt.encoded.target_id
        if not correct[key]:
            skip("the model answers the drawn prompt wrongly", fact_id, f"template {prompt.template_id}")
            continue
        new_id = adapter.single_token(new_object, prompts.relations[relation].templates[prompt.template_id])
        if new_id is None:  # t' as a token in the drawn prompt's own template
            skip("no other single-token object in the relation to update to", fact_id)
            continue
        intra_pool = [f for f in pool if f != fact_id]
        intra = [p for _ in range(config.intra_facts if intra_pool else 0) for p in _usable_draw(prompts, intra_pool, rng)]
        inter = []
        for _ in range(config.inter_facts if others else 0):  # relation first, then one of its facts
            inter += _usable_draw(prompts, everything[rng.choice(others)], rng)
        if not intra or not inter:
            skip(f"no {'intra' if not intra else 'inter'}-relation prompts to measure perplexity on", fact_id)
            continue
        done += 1
        yield fact_id, PlannedEdit(prompt, prompt.encoded.target_id, new_id, new_object, neurons, intra, inter)


def _usable_draw(prompts: FactPrompts, fact_ids: list[str], rng, tries: int = 100) -> list[Prompt]:
    """The prompts of a fact drawn uniformly from ``fact_ids``, redrawn while the model cannot be asked it
    (a multi-token object; PARAREL's objects are all single BERT tokens, so the official draw never
    meets one). Empty when ``tries`` draws found none."""
    for _ in range(tries):
        found = prompts.of(rng.choice(fact_ids))
        if found:
            return found
    return []


def _official_new_object(adapter: ModelAdapter, old_object: str, objects: list[str], template: str, rng,
                         tries: int = 1000) -> tuple[str | None, int]:
    """t': the object of a random fact of the relation whose object differs, redrawn until it is one token
    for the model (the official loop draws ``random.choice`` over the relation's facts until it differs).
    (None, -1) when no such object exists or ``tries`` draws found none."""
    if not any(o != old_object for o in objects):
        return None, -1
    for _ in range(tries):
        obj = rng.choice(objects)
        token = None if obj == old_object else adapter.single_token(obj, template)
        if token is not None:
            return obj, token
    return None, -1


def _plan_edit(
    adapter: ModelAdapter, fact_id: str, relation: str, ids: list[str], population: list[str], groups: dict[str, list[str]],
    prompts: FactPrompts, kns: dict, bags: Mapping[str, list], config: UpdateConfig, rng, skips: SkipLog,
    editable: Callable[[str], list[Prompt]],
) -> PlannedEdit | None:
    """Everything one edit needs under our sampling, or None (with the reason logged)."""
    own = editable(fact_id)
    if not own:
        return None
    neurons = _selected(fact_id, kns, bags, population, config)
    if not neurons:
        skips.add(_no_kn_reason(config), relation, fact_id)
        return None
    prompt = rng.choice(own)  # one prompt, as the official script draws it
    if int(answer_distribution(adapter, prompt.encoded).argmax()) != prompt.encoded.target_id:
        skips.add("the model answers the drawn prompt wrongly", relation, fact_id, f"template {prompt.template_id}")
        return None
    template = prompts.relations[relation].templates[prompt.template_id]
    old_object = prompts.facts[fact_id]["object"]
    new_ids, single_token = single_token_ids(adapter, template)
    new_object = draw_new_object(old_object, [prompts.facts[f]["object"] for f in ids], rng, single_token)
    if new_object is None:
        skips.add("no other single-token object in the relation to update to", relation, fact_id)
        return None
    intra_ids = [f for f in ids if f != fact_id and prompts.of(f)]
    intra = [p for f in rng.sample(intra_ids, min(config.intra_facts, len(intra_ids))) for p in prompts.of(f)]
    other_relations = sorted(r for r in groups if r != relation)
    inter = []
    for _ in range(config.inter_facts if other_relations else 0):  # like the official script: relation, then fact
        inter += prompts.of(rng.choice(groups[rng.choice(other_relations)]))
    if not intra or not inter:
        skips.add(f"no {'intra' if not intra else 'inter'}-relation prompts to measure perplexity on", relation, fact_id)
        return None
    return PlannedEdit(prompt, prompt.encoded.target_id, new_ids[new_object], new_object, neurons, intra, inter)


def single_token_ids(adapter: ModelAdapter, template: str) -> tuple[dict[str, int], Callable[[str], bool]]:
    """(object -> its answer token id after ``template``, -1 when it is several tokens; the test ``usable``
    of ``draw_new_object`` that fills that cache, True for a single-token object)."""
    ids: dict[str, int] = {}

    def usable(obj: str) -> bool:
        if obj not in ids:
            token = adapter.single_token(obj, template)
            ids[obj] = -1 if token is None else token
        return ids[obj] >= 0

    return ids, usable


def draw_new_object(old_object: str, objects: list[str], rng, usable=lambda obj: True) -> str | None:
    """t' for an edit: the object of a fact drawn uniformly among the relation's facts whose object differs
    from t (and is ``usable``: single-token for the model). Drawn by fact, as the official script does
    (``random.choice`` over the relation's facts until the object differs), so an object held by many
    facts comes up more often than under a draw among distinct objects. None when there is none."""
    partners = [obj for obj in objects if obj != old_object and usable(obj)]
    return rng.choice(partners) if partners else None


def delta_ppl(ppl_prompts: pd.DataFrame, source: str = "p") -> float:
    r"""Table 6's Delta PPL as the official script averages it, over the edits e of one neuron set and scope:

        PPL = exp( mean_e log PPL_e ),   Delta PPL = PPL_after - PPL_before,

    with each edit's log PPL_e (``edit_log_perplexities``) from the stored probabilities
    (``source="p"``: infinite once a p is 0 in float32) or from the stored log-softmax values
    (``"logp"``: finite)."""
    if not len(ppl_prompts):
        return float("nan")
    per_edit = edit_log_perplexities(ppl_prompts, source)
    return float(ppl_difference(per_edit["before"].mean(), per_edit["after"].mean()))


def edit_log_perplexities(ppl_prompts: pd.DataFrame, source: str = "p") -> pd.DataFrame:
    """Each edit's log PPL before and after (``evaluation.log_perplexity`` of its prompts), one row per
    edit with the other columns' first value (e.g. its ``fact_id``): the terms ``delta_ppl`` averages."""
    edits = ppl_prompts[_edit_column(ppl_prompts)]
    out = ppl_prompts.groupby(edits, sort=False).first()
    for when in ("before", "after"):
        if source == "p":
            logs = ppl_prompts[f"p_{when}"].map(lambda p: math.log(p) if p > 0 else -math.inf)
        else:
            logs = ppl_prompts[f"logp_{when}"]
        out[when] = [log_perplexity(group.tolist()) for _, group in logs.groupby(edits, sort=False)]
    return out


def ppl_difference(mean_log_before, mean_log_after):
    """PPL_after - PPL_before from the mean log perplexities (``delta_ppl``); NaN when PPL_before is
    infinite. Works on arrays (one entry per bootstrap resample) as on numbers."""
    ppl = [np.where(m < 709.78, np.exp(np.minimum(m, 709.78)), np.inf)  # beyond that exp overflows a float
           for m in (np.asarray(mean_log_before, dtype=float), np.asarray(mean_log_after, dtype=float))]
    return np.where(np.isfinite(ppl[0]), ppl[1] - ppl[0], np.nan)


def _edit_column(frame: pd.DataFrame) -> str:
    """One edit per value: ``edit`` (a fact drawn twice is two edits), or ``fact_id`` in tables from before it."""
    return "edit" if "edit" in frame.columns else "fact_id"


def median_delta_ppl(ppl_prompts: pd.DataFrame) -> float:
    """The median over edits of each edit's own Delta PPL (from log-probabilities): robust to a few edits
    that send one answer's probability to 0."""
    if not len(ppl_prompts):
        return float("nan")
    per_edit = [delta_ppl(group, "logp") for _, group in ppl_prompts.groupby(_edit_column(ppl_prompts))]
    return float(pd.Series(per_edit).median())


def _summarise(table: pd.DataFrame, ppl_prompts: pd.DataFrame, para: pd.DataFrame, name: str, tag: dict, seed: int) -> UpdateSummary:
    rows = table[table["neuron_set"] == name] if len(table) else table
    ppl = ppl_prompts[ppl_prompts["neuron_set"] == name]
    para = para[para["neuron_set"] == name]
    intra = ppl[ppl["scope"] == "intra"]

    def percent(frame: pd.DataFrame, column: str) -> float:
        return float(frame[column].mean() * 100) if len(frame) else float("nan")

    def delta(scope: str, how: str = "p") -> float:
        sel = ppl[ppl["scope"] == scope]
        return delta_ppl(sel, how) if how != "median" else median_delta_ppl(sel)

    n = len(rows)
    return UpdateSummary(
        model=tag["model"], method=tag["method"], neuron_set=name, n_edits=n,
        change_rate=float(rows["changed"].mean() * 100) if n else float("nan"),
        success_rate=float(rows["success"].mean() * 100) if n else float("nan"),
        delta_intra_ppl=delta("intra"), delta_inter_ppl=delta("inter"),
        paraphrase_change_rate=percent(para, "changed"), paraphrase_success_rate=percent(para, "success"),
        intra_changed_rate=percent(intra, "top1_changed"), intra_new_rate=percent(intra, "new_after"), seed=seed,
        delta_intra_ppl_logspace=delta("intra", "logp"), delta_inter_ppl_logspace=delta("inter", "logp"),
        delta_intra_ppl_median=delta("intra", "median"), delta_inter_ppl_median=delta("inter", "median"),
    )
