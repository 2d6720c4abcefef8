"""Knowledge neurons affect knowledge expression (Dai et al. 2022, section 4.5: Figures 4 and 5).

For each fact with knowledge neurons, on each of its prompts: suppress the neurons (activation set to
0) or amplify them (activation doubled) at the answer position, and record the probability of the
correct answer before and after. As a check of specificity, the same fact's neurons are applied to the
prompts of one fact drawn at random from another relation ("unrelated facts", as in the official
``3_modify_activation.py``). Per relation the change ratio (``change_ratio``) summarises each case.

The unrelated fact (``ManipulationConfig.unrelated_pool``): ``"all"`` (default, official) draws another
relation uniformly among *all* the data's other relations, then one of *all* its facts, redrawn while the
model cannot be asked it (a multi-token object; the official script's BERT facts are all single-token);
``"sample"`` (ours before) draws among the analysed sample's facts of the sample's other relations.

Averaging (the paper's text is silent; ``ManipulationConfig.averaging``):

* ``"official"`` (default, ``3_modify_activation.py`` and ``8_plot_fig_erase_enhance.py``): every fact
  of the relation counts, a fact without knowledge neurons with zero change (nothing is suppressed), and
  the figure's mean is over all relations, a relation without any knowledge neuron at 0 %;
* ``"kn_only"`` (ours, a labelled variant): only facts with knowledge neurons, and only relations with
  some. It answers "what happens where there is something to manipulate" and gives larger magnitudes.

Both are computed in one run: ``by_relation`` follows ``averaging``, ``by_relation_kn_only`` is always
the variant, and the summary carries both.

Changed predictions (``ManipulationConfig.flips``, beyond the paper): a probability can fall by a third
while the model still answers correctly. Each row also records whether the top-1 answer is the correct
one before and after (``correct_before``, ``correct_after``) and ``flip``: for ``suppress`` a correct
answer lost, for ``amplify`` a wrong answer made correct (``flip_rate``: among the prompts where that
can happen).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable, Iterable, Literal, Mapping

import pandas as pd

from ..adapters import ModelAdapter
from ..data import Relation
from .evaluation import FactPrompts, Prompt, SkipLog, answer_distribution, answer_distributions, seeded_rng, tag_of
from .interventions import scaled_activations
from .neuron_sets import check_refined, neurons_by_fact

OPERATIONS = {"suppress": 0.0, "amplify": 2.0}  # factor applied to the activations (section 4.5)


@dataclass(frozen=True)
class ManipulationConfig:
    seed: int = 0  # draws the unrelated fact of each fact
    unrelated: bool = True  # also apply each fact's neurons to a fact of another relation
    # "official": facts without knowledge neurons count with zero change, mean over all relations;
    # "kn_only" (ours): facts with knowledge neurons only (skips the others' forward passes)
    averaging: Literal["official", "kn_only"] = "official"
    # "all" (official): the unrelated fact among every fact of the data's other relations; "sample": the sample's
    unrelated_pool: Literal["all", "sample"] = "all"
    flips: bool = True  # also record the top-1 answer before / after (False: the tables before it)

    def __post_init__(self) -> None:
        if self.averaging not in ("official", "kn_only"):
            raise ValueError(f"averaging must be 'official' or 'kn_only', got {self.averaging!r}")
        if self.unrelated_pool not in ("all", "sample"):
            raise ValueError(f"unrelated_pool must be 'all' or 'sample', got {self.unrelated_pool!r}")


@dataclass(frozen=True)
class ManipulationSummary:
    """Averages over relations of the per-relation change ratios, in percent, under ``averaging``;
    the ``*_kn_only`` fields are our variant (facts with knowledge neurons only) from the same run."""

    model: str
    method: str
    n_facts: int  # facts evaluated (official averaging: with or without knowledge neurons)
    n_relations: int
    suppress_own: float  # paper: -29.03 % (ours), -1.47 % (baseline)
    amplify_own: float  # paper: +31.17 % (ours), -1.27 % (baseline)
    suppress_unrelated: float
    amplify_unrelated: float
    seed: int
    averaging: str = "official"
    n_facts_with_kn: int = 0
    n_relations_with_kn: int = 0
    suppress_own_kn_only: float = float("nan")
    amplify_own_kn_only: float = float("nan")
    suppress_unrelated_kn_only: float = float("nan")
    amplify_unrelated_kn_only: float = float("nan")
    # changed predictions (``flips``), mean over relations of the per-relation flip rate, in percent
    suppress_own_flip: float = float("nan")  # correct top-1 answers lost
    amplify_own_flip: float = float("nan")  # wrong top-1 answers made correct


@dataclass
class ManipulationResult:
    table: pd.DataFrame  # one row per (fact, evaluated prompt, operation); n_kn = 0: no change, not run
    by_relation: pd.DataFrame  # one row per (relation, scope, operation): the change ratio (``averaging``)
    by_relation_kn_only: pd.DataFrame  # the same over facts with knowledge neurons only (our variant)
    summary: ManipulationSummary
    skipped: pd.DataFrame
    config: ManipulationConfig


def change_ratio(before: Iterable[float], after: Iterable[float]) -> float:
    r"""Figures 4-5, the relative change of the correct answer's probability over a set of prompts:

        ratio = (mean_i p_i^after - mean_i p_i^before) / mean_i p_i^before.

    This is the official script's quantity (``ave_delta / ori_prob``, a ratio of means, which keeps a
    few near-zero probabilities from dominating); the paper plots it per relation, in percent."""
    before, after = list(before), list(after)
    if not before or len(before) != len(after):
        raise ValueError("change ratio needs as many 'after' as 'before' probabilities, at least one")
    mean_before = sum(before) / len(before)
    return (sum(after) / len(after) - mean_before) / mean_before


def flipped(operation: str, correct_before: bool, correct_after: bool) -> bool:
    """A changed prediction in the operation's direction: suppressing loses a correct top-1 answer,
    amplifying makes a wrong one correct."""
    if operation == "suppress":
        return bool(correct_before and not correct_after)
    if operation == "amplify":
        return bool(not correct_before and correct_after)
    raise ValueError(f"operation must be one of {', '.join(OPERATIONS)}, got {operation!r}")


def _measure(adapter: ModelAdapter, prompt: Prompt, neurons, fact_id: str, scope: str, flips: bool = True) -> list[dict]:
    """p(answer) (and whether top-1 is the answer) before and after each operation; with no neuron nothing
    changes (no forward pass needed)."""
    target = prompt.encoded.target_id
    if neurons:  # one forward pass: unchanged, then each operation, as rows of one batch
        factors = [1.0, *OPERATIONS.values()]
        with scaled_activations(adapter, neurons, prompt.encoded.answer_pos, factors):
            dists = answer_distributions(adapter, prompt.encoded, len(factors))
    else:
        dists = [answer_distribution(adapter, prompt.encoded)] * (1 + len(OPERATIONS))
    p_before, correct_before = dists[0][target].item(), int(dists[0].argmax()) == target
    rows = []
    for (operation, factor), after in zip(OPERATIONS.items(), dists[1:]):
        p_after, correct_after = after[target].item(), int(after.argmax()) == target
        row = {"fact_id": fact_id, "scope": scope, "eval_fact_id": prompt.fact_id, "eval_relation": prompt.relation,
               "template_id": prompt.template_id, "operation": operation, "factor": factor, "p_before": p_before, "p_after": p_after}
        if flips:
            row |= {"correct_before": correct_before, "correct_after": correct_after,
                    "flip": flipped(operation, correct_before, correct_after)}
        rows.append(row)
    return rows


def suppress_and_amplify(
    adapter: ModelAdapter,
    refined: pd.DataFrame,
    facts: Iterable[Mapping],
    relations: Mapping[str, Relation],
    config: ManipulationConfig = ManipulationConfig(),
    population: Iterable[Mapping] | None = None,
    progress: Callable[[int], object] | None = None,
) -> ManipulationResult:
    """Figures 4 and 5 for one refined table (knowledge neurons, baseline, or ``random_like`` control).

    ``facts`` are the facts to evaluate (their prompts come from ``relations``' templates); facts without
    knowledge neurons, without usable prompts, or whose relation has no other relation to compare with
    are logged in ``skipped``. ``population`` (``unrelated_pool="all"``; default: ``facts``) are the facts
    unrelated ones are drawn from; ``relations`` must then hold their relations' templates too.
    ``progress(n)`` is called as facts are done.
    """
    check_refined(refined)
    skips = SkipLog("suppress_and_amplify")
    facts = list(facts)
    prompts = FactPrompts(adapter, facts, relations, skips)
    pool = prompts
    if config.unrelated_pool == "all" and population is not None:
        pool = FactPrompts(adapter, population, relations, SkipLog("population"))  # its skips are not the sample's
    kns = neurons_by_fact(refined)
    groups = prompts.by_relation()
    for relation, ids in groups.items():
        if not any(f in kns for f in ids):
            skips.add("relation without knowledge neurons", relation)
    pool_groups = pool.by_relation()
    if config.unrelated_pool == "sample":  # drawn among those the model can be asked (usable prompts), per relation
        usable = {r: [f for f in ids if prompts.of(f)] for r, ids in groups.items()}
        pool_groups = {r: ids for r, ids in usable.items() if ids}
    rows = []
    for i, (fact_id, fact) in enumerate(prompts.facts.items()):
        if progress is not None and i:
            progress(1)  # the fact before is done (the loop's ``continue``s skip an end-of-body call)
        own = prompts.of(fact_id)
        if not own:
            continue  # the reason is already logged
        if fact_id not in kns and config.averaging == "kn_only":
            skips.add("no knowledge neurons", fact["relation"], fact_id)
            continue
        neurons = kns.get(fact_id, [])
        for prompt in own:
            rows += _measure(adapter, prompt, neurons, fact_id, "own", config.flips)
        if not config.unrelated:
            continue
        rng = seeded_rng(config.seed, fact_id)
        others = sorted(r for r in pool_groups if r != fact["relation"])
        unrelated = _unrelated_prompts(pool, pool_groups, others, rng, redraw=config.unrelated_pool == "all")
        if not unrelated:
            skips.add("no other relation to draw an unrelated fact from" if not others
                      else "no unrelated fact the model can be asked", fact["relation"], fact_id)
            continue
        for prompt in unrelated:
            rows += _measure(adapter, prompt, neurons, fact_id, "unrelated", config.flips)
    columns = ["fact_id", "scope", "eval_fact_id", "eval_relation", "template_id", "operation", "factor", "p_before", "p_after"]
    table = pd.DataFrame(rows, columns=columns + (["correct_before", "correct_after", "flip"] if config.flips else []))
    table.insert(1, "relation", table["fact_id"].map(lambda f: prompts.facts[f]["relation"]))
    table["n_kn"] = table["fact_id"].map(lambda f: len(kns.get(f, ()))).astype("int64")
    by_relation = _by_relation(table)
    kn_only = _by_relation(table[table["n_kn"] > 0])
    tag = tag_of(refined)

    def mean_percent(frame: pd.DataFrame, scope: str, operation: str) -> float:
        sel = frame[(frame["scope"] == scope) & (frame["operation"] == operation)]
        return float(sel["change_ratio"].mean() * 100) if len(sel) else float("nan")

    means = {f"{op}_{scope}": mean_percent(by_relation, scope, op) for op in OPERATIONS for scope in ("own", "unrelated")}
    means_kn = {f"{op}_{scope}_kn_only": mean_percent(kn_only, scope, op) for op in OPERATIONS for scope in ("own", "unrelated")}
    flip_means = {}
    if config.flips:
        for op in OPERATIONS:
            sel = by_relation[(by_relation["scope"] == "own") & (by_relation["operation"] == op)]
            flip_means[f"{op}_own_flip"] = float(sel["flip_rate"].mean() * 100) if sel["flip_rate"].notna().any() else float("nan")
    with_kn = table[table["n_kn"] > 0]
    summary = ManipulationSummary(
        model=tag["model"], method=tag["method"], n_facts=table["fact_id"].nunique(), n_relations=table["relation"].nunique(),
        seed=config.seed, averaging=config.averaging, n_facts_with_kn=with_kn["fact_id"].nunique(),
        n_relations_with_kn=with_kn["relation"].nunique(), **means, **means_kn, **flip_means,
    )
    for frame in (table, by_relation, kn_only):
        frame["model"], frame["method"], frame["seed"] = tag["model"], tag["method"], config.seed
    return ManipulationResult(table, by_relation, kn_only, summary, skips.frame(), config)


def _unrelated_prompts(pool: FactPrompts, groups: Mapping[str, list[str]], others: list[str], rng, redraw: bool,
                       tries: int = 100) -> list[Prompt]:
    """The prompts of one fact of another relation: relation first, then fact (official). With ``redraw``,
    a fact the model cannot be asked is drawn again (up to ``tries`` times)."""
    for _ in range(tries if redraw else 1):
        if not others:
            return []
        found = pool.of(rng.choice(groups[rng.choice(others)]))
        if found:
            return found
    return []


def flip_eligible(table: pd.DataFrame, operation: str | None = None) -> pd.Series:
    """Rows where the operation (``operation``, else the ``operation`` column) can flip the prediction:
    correct before (suppress), not correct before (amplify)."""
    suppress = (table["operation"] == "suppress") if operation is None else operation == "suppress"
    return table["correct_before"].astype(bool) == suppress


def _by_relation(table: pd.DataFrame) -> pd.DataFrame:
    """Per (relation, scope, operation): facts, prompts, mean p before / after, the change ratio, and (with
    flips) the prompts that could flip and the share that did."""
    flips = "flip" in table.columns
    columns = ["relation", "scope", "operation", "n_facts", "n_facts_with_kn", "n_prompts", "mean_p_before", "mean_p_after",
               "change_ratio"] + (["n_flip_eligible", "flip_rate"] if flips else [])

    def summary(g: pd.DataFrame) -> pd.Series:
        out = {"n_facts": g["fact_id"].nunique(), "n_facts_with_kn": g.loc[g["n_kn"] > 0, "fact_id"].nunique(),
               "n_prompts": len(g), "mean_p_before": g["p_before"].mean(), "mean_p_after": g["p_after"].mean(),
               "change_ratio": change_ratio(g["p_before"], g["p_after"])}
        if flips:
            eligible = g[flip_eligible(g, g.name[2])]
            out |= {"n_flip_eligible": len(eligible), "flip_rate": eligible["flip"].mean() if len(eligible) else float("nan")}
        return pd.Series(out)

    if not len(table):
        return pd.DataFrame(columns=columns)
    return table.groupby(["relation", "scope", "operation"], sort=True).apply(summary, include_groups=False).reset_index()[columns]
