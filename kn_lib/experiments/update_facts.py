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

In three modules: ``update_plans`` (the config, and which facts, neurons, new answers and perplexity
prompts an edit takes: steps 1-3, official and ours), this one (the edits and their tables: steps 4-8)
and ``update_summary`` (Table 6's numbers from those tables: Delta PPL as the official script averages it).
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Callable, Iterable, Mapping

import pandas as pd

from ..adapters import ModelAdapter
from ..data import Relation
from .evaluation import (
    SKIP_COLUMNS, FactPrompts, Prompt, SkipLog, answer_distribution, answer_readouts, perplexity, seeded_rng, tag_of,
)
from .interventions import edited_value_slots, updated_value_slots
from .controls import base_kind, matched_neurons, mean_answer_activations
from .neuron_sets import check_refined, neurons_by_fact, random_neurons
from .update_plans import UpdateConfig, _official_plans, _ours_plans
from .update_summary import UpdateSummary, _summarise


TABLE_COLUMNS = [
    "edit", "fact_id", "relation", "neuron_set", "n_neurons", "neurons", "template_id", "text", "old_object", "new_object",
    "top1_before", "top1_after", "changed", "success", "p_old_before", "p_old_after", "p_new_before", "p_new_after",
    "ppl_intra_before", "ppl_intra_after", "ppl_inter_before", "ppl_inter_after", "sign_aware", "n_bags", "n_fact_kns",
]


@dataclass
class UpdateResult:
    table: pd.DataFrame  # one row per (edited fact, neuron set)
    ppl_prompts: pd.DataFrame  # one row per (edit, neuron set, evaluated prompt): p and top-1 before / after
    paraphrases: pd.DataFrame  # one row per (edit, neuron set, other prompt of the edited fact)
    summary: list[UpdateSummary]
    skipped: pd.DataFrame
    config: UpdateConfig


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

    Held-out prompts (``run.held_out_update_stage``): ``edit_templates`` (fact -> template ids) limits the prompt
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
