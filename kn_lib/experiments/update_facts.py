"""Updating facts by editing knowledge neurons' value slots (Dai et al. 2022, section 5.1: Table 6).

Per relation, facts the model answers correctly are drawn at random (seeded) until ``facts_per_relation``
are edited. For each fact <h, r, t>:

1. keep its knowledge neurons shared by fewer than ``max_share`` (10 %) of the relation's other facts;
2. draw a new answer t' among the relation's other objects (single-token for the model);
3. edit those neurons' value slots (``interventions.updated_value_slots``: -lambda1 t + lambda2 t');
4. read the edited prompt's top-1 prediction: *changed* if it is no longer t, *success* if it is t';
5. perplexity of the correct answers of ``intra_facts`` other facts of the relation and of
   ``inter_facts`` facts of other relations, before and after (``evaluation.perplexity``);
6. beyond the paper: the top-1 answer of the fact's *other* prompts (its PARAREL paraphrases) after
   the edit (does the edit generalise?), and of the intra-relation prompts (is it specific, or does
   every fact of the relation now answer t'?);
7. restore the weights exactly, and repeat 3-6 with as many random neurons (the control).

Choices the paper leaves open, taken from the official ``6_edit_knowledge_sampled.py`` unless said:

* the edited prompt is one of the fact's prompts, drawn at random among those the model answers
  correctly; a fact with none is not "learned" and is skipped (the official script draws one prompt and
  skips the fact when that prompt is wrong);
* "shared by fewer than 10 % of intra-relation facts" counts the *other* facts of the relation among
  the given facts, so a neuron unique to the fact is always kept (the official count includes the fact
  itself, twice, which matters only for tiny samples);
* Delta PPL is perplexity over all evaluated prompts pooled after minus before (the official script
  averages per-edit log perplexities; the two agree when edits have equally many prompts).

``sign_aware=True`` (off by default; not in the paper) flips the edit of neurons whose activation on the
edited prompt is negative, which gated FFNs (SwiGLU, as in SmolLM2) produce; see
``interventions.updated_value_slots``.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Iterable, Mapping

import pandas as pd

from ..adapters import ModelAdapter, MultiTokenObject
from ..data import Relation
from .evaluation import FactPrompts, Prompt, SkipLog, answer_distribution, perplexity, seeded_rng, tag_of
from .interventions import edited_value_slots, updated_value_slots
from .neuron_sets import check_refined, neurons_by_fact, random_neurons


TABLE_COLUMNS = [
    "fact_id", "relation", "neuron_set", "n_neurons", "neurons", "template_id", "text", "old_object", "new_object",
    "top1_before", "top1_after", "changed", "success", "p_old_before", "p_old_after", "p_new_before", "p_new_after",
    "ppl_intra_before", "ppl_intra_after", "ppl_inter_before", "ppl_inter_after", "sign_aware",
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


@dataclass(frozen=True)
class UpdateSummary:
    """Table 6, one per neuron set."""

    model: str
    method: str
    neuron_set: str  # "knowledge" or "random"
    n_edits: int
    change_rate: float  # paper: 48.5 % (knowledge neurons), 4.7 % (random)
    success_rate: float  # paper: 34.4 % / 0.0 %
    delta_intra_ppl: float  # paper: 8.4 / 10.1
    delta_inter_ppl: float  # paper: 7.2 / 4.3
    # beyond the paper: the fact's other paraphrases, and other facts of the relation (top-1 answers)
    paraphrase_change_rate: float  # % of the other prompts whose top-1 is no longer the old answer
    paraphrase_success_rate: float  # % of the other prompts whose top-1 is now the new answer
    intra_changed_rate: float  # % of intra-relation prompts whose top-1 answer changed
    intra_new_rate: float  # % of intra-relation prompts now answering the edit's new object
    seed: int


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


def _p_top1(adapter: ModelAdapter, prompts: list[Prompt]) -> tuple[list[float], list[int]]:
    """p(correct answer) and the top-1 token of each prompt, as the model is now."""
    dists = [answer_distribution(adapter, p.encoded) for p in prompts]
    return [d[p.encoded.target_id].item() for d, p in zip(dists, prompts)], [int(d.argmax()) for d in dists]


def update_facts(
    adapter: ModelAdapter,
    refined: pd.DataFrame,
    facts: Iterable[Mapping],
    relations: Mapping[str, Relation],
    config: UpdateConfig = UpdateConfig(),
) -> UpdateResult:
    """Table 6 for one refined table; ``facts`` are the candidates, the new answers and the PPL prompts."""
    check_refined(refined)
    skips = SkipLog("update_facts")
    prompts = FactPrompts(adapter, facts, relations, skips)
    kns = neurons_by_fact(refined)
    groups = prompts.by_relation()
    rows, ppl_rows, para_rows = [], [], []
    for relation, ids in groups.items():
        rng = seeded_rng(config.seed, relation)
        candidates = [f for f in ids if f in kns]
        if not candidates:
            skips.add("relation without knowledge neurons", relation)
            continue
        rng.shuffle(candidates)
        done = 0
        for fact_id in candidates:
            if done == config.facts_per_relation:
                break
            edit = _plan_edit(adapter, fact_id, relation, ids, groups, prompts, kns, config, rng, skips)
            if edit is None:
                continue
            done += 1
            prompt, old_id, new_id, neurons, intra, inter = edit.prompt, edit.old_id, edit.new_id, edit.neurons, edit.intra, edit.inter
            before = answer_distribution(adapter, prompt.encoded)
            (p_intra, t_intra), (p_inter, t_inter) = _p_top1(adapter, intra), _p_top1(adapter, inter)
            paraphrases = [p for p in prompts.of(fact_id) if p.template_id != prompt.template_id]
            _, t_para = _p_top1(adapter, paraphrases)
            sets = [("knowledge", neurons)]
            if config.random_control:
                sets.append(("random", random_neurons(len(neurons), adapter.n_layers, adapter.n_neurons, rng, kns[fact_id])))
            acts = adapter.activations(prompt.encoded) if config.sign_aware else None
            for name, chosen in sets:
                signs = {n: 1.0 if acts[n] >= 0 else -1.0 for n in chosen} if acts is not None else None
                slots = updated_value_slots(adapter, chosen, old_id, new_id, config.lambda1, config.lambda2, signs)
                with edited_value_slots(adapter, slots):
                    after = answer_distribution(adapter, prompt.encoded)
                    (q_intra, u_intra), (q_inter, u_inter) = _p_top1(adapter, intra), _p_top1(adapter, inter)
                    _, u_para = _p_top1(adapter, paraphrases)
                top1 = int(after.argmax())
                rows.append(
                    {"fact_id": fact_id, "relation": relation, "neuron_set": name, "n_neurons": len(chosen),
                     "neurons": [list(n) for n in chosen], "template_id": prompt.template_id, "text": prompt.encoded.text,
                     "old_object": prompts.facts[fact_id]["object"], "new_object": edit.new_object,
                     "top1_before": adapter.tokenizer.decode([int(before.argmax())]), "top1_after": adapter.tokenizer.decode([top1]),
                     "changed": top1 != old_id, "success": top1 == new_id,
                     "p_old_before": before[old_id].item(), "p_old_after": after[old_id].item(),
                     "p_new_before": before[new_id].item(), "p_new_after": after[new_id].item(),
                     "ppl_intra_before": perplexity(p_intra), "ppl_intra_after": perplexity(q_intra),
                     "ppl_inter_before": perplexity(p_inter), "ppl_inter_after": perplexity(q_inter),
                     "sign_aware": config.sign_aware}
                )
                for scope, group, ps, qs, ts, us in (("intra", intra, p_intra, q_intra, t_intra, u_intra),
                                                     ("inter", inter, p_inter, q_inter, t_inter, u_inter)):
                    ppl_rows += [
                        {"fact_id": fact_id, "neuron_set": name, "scope": scope, "eval_fact_id": p.fact_id,
                         "template_id": p.template_id, "p_before": a, "p_after": b, "top1_changed": t != u,
                         "correct_before": t == p.encoded.target_id, "correct_after": u == p.encoded.target_id,
                         "new_after": u == new_id}
                        for p, a, b, t, u in zip(group, ps, qs, ts, us)
                    ]
                para_rows += [
                    {"fact_id": fact_id, "neuron_set": name, "template_id": p.template_id,
                     "correct_before": t == old_id, "changed": u != old_id, "success": u == new_id}
                    for p, t, u in zip(paraphrases, t_para, u_para)
                ]
        if done < config.facts_per_relation:
            skips.add(f"only {done} of {config.facts_per_relation} facts could be edited", relation)
    tag = tag_of(refined)
    table = pd.DataFrame(rows, columns=TABLE_COLUMNS)
    ppl_prompts = pd.DataFrame(ppl_rows, columns=["fact_id", "neuron_set", "scope", "eval_fact_id", "template_id", "p_before",
                                                  "p_after", "top1_changed", "correct_before", "correct_after", "new_after"])
    para = pd.DataFrame(para_rows, columns=["fact_id", "neuron_set", "template_id", "correct_before", "changed", "success"])
    summary = [_summarise(table, ppl_prompts, para, name, tag, config.seed)
               for name in (["knowledge", "random"] if config.random_control else ["knowledge"])]
    for frame in (table, ppl_prompts, para):
        frame["model"], frame["method"], frame["seed"] = tag["model"], tag["method"], config.seed
    return UpdateResult(table, ppl_prompts, para, summary, skips.frame(), config)


def _plan_edit(
    adapter: ModelAdapter, fact_id: str, relation: str, ids: list[str], groups: dict[str, list[str]],
    prompts: FactPrompts, kns: dict, config: UpdateConfig, rng, skips: SkipLog,
) -> PlannedEdit | None:
    """Everything one edit needs, or None (with the reason logged)."""
    own = prompts.of(fact_id)
    if not own:
        return None
    correct = [p for p in own if int(answer_distribution(adapter, p.encoded).argmax()) == p.encoded.target_id]
    if not correct:
        skips.add("the model answers none of the fact's prompts correctly", relation, fact_id)
        return None
    prompt = rng.choice(correct)
    neurons = exclusive_neurons(fact_id, kns, ids, config.max_share)
    if not neurons:
        skips.add(f"no knowledge neuron shared by fewer than {config.max_share:.0%} of the relation's other facts", relation, fact_id)
        return None
    template = prompts.relations[relation].templates[prompt.template_id]
    old_object = prompts.facts[fact_id]["object"]
    new_ids = {}
    for obj in sorted({prompts.facts[f]["object"] for f in ids} - {old_object}):
        try:
            new_ids[obj] = adapter.answer_token(obj, template)
        except MultiTokenObject:
            continue
    if not new_ids:
        skips.add("no other single-token object in the relation to update to", relation, fact_id)
        return None
    new_object = rng.choice(sorted(new_ids))
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


def _summarise(table: pd.DataFrame, ppl_prompts: pd.DataFrame, para: pd.DataFrame, name: str, tag: dict, seed: int) -> UpdateSummary:
    rows = table[table["neuron_set"] == name] if len(table) else table
    ppl = ppl_prompts[ppl_prompts["neuron_set"] == name]
    para = para[para["neuron_set"] == name]
    intra = ppl[ppl["scope"] == "intra"]

    def percent(frame: pd.DataFrame, column: str) -> float:
        return float(frame[column].mean() * 100) if len(frame) else float("nan")

    def delta(scope: str) -> float:
        sel = ppl[ppl["scope"] == scope]
        return perplexity(sel["p_after"].tolist()) - perplexity(sel["p_before"].tolist()) if len(sel) else float("nan")

    n = len(rows)
    return UpdateSummary(
        model=tag["model"], method=tag["method"], neuron_set=name, n_edits=n,
        change_rate=float(rows["changed"].mean() * 100) if n else float("nan"),
        success_rate=float(rows["success"].mean() * 100) if n else float("nan"),
        delta_intra_ppl=delta("intra"), delta_inter_ppl=delta("inter"),
        paraphrase_change_rate=percent(para, "changed"), paraphrase_success_rate=percent(para, "success"),
        intra_changed_rate=percent(intra, "top1_changed"), intra_new_rate=percent(intra, "new_after"), seed=seed,
    )
