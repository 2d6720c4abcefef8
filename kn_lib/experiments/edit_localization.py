"""Does localization inform editing, for knowledge neurons? A re-test of Hase et al. (NeurIPS 2023,
arXiv 2301.04213) with the paper's value-slot edit (Dai et al. 2022, section 5.1) in place of ROME.

Hase et al. find that where causal tracing localises a fact in GPT-J does not predict at which layer a
ROME edit of it succeeds: the edit layer alone explains most of the variance in edit success, the tracing
score adds almost nothing. The knowledge-neuron claim is a localization claim too (a fact lives in its
neurons, mostly in the top layers), so the same test applies. For each fact with knowledge neurons:

1. one of its prompts the model answers correctly (``require_correct``), drawn per fact;
2. a new answer t' (``update_plans.draw_new_object``: the object of another fact of the relation,
   single-token for the model);
3. integrated-gradients scores of that prompt for the original answer, [n_layers, n_neurons];
4. per layer l, its localization: the share of the positive attribution mass in l (``mass_share``) and
   the number of the fact's knowledge neurons in l (the ``kn_layer`` holds most);
5. at *every* layer, edit the layer's top-k neurons by score (k = the fact's number of knowledge
   neurons) towards t' (``interventions.updated_value_slots``, restored exactly afterwards) and read the
   prompt's answer; with ``controls``, the same at k random neurons of the layer.

``edit_localization_fit`` then asks whether the localization adds to the layer in predicting success.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable, Iterable, Mapping

import pandas as pd
import torch

from ..adapters import ModelAdapter
from ..attribution import IGConfig, integrated_gradients_many
from ..data import Relation
from .controls import layer_matched_neurons
from .edit_localization_fit import kn_layer_advantage, layer_r2, r2_increment_interval
from .evaluation import FactPrompts, Prompt, SkipLog, answer_distribution, answered_correctly, seeded_rng, tag_of
from .interventions import edited_value_slots, updated_value_slots
from .neuron_sets import check_refined, neurons_by_fact
from .update_plans import draw_new_object, single_token_ids

__all__ = ["EditLocalizationConfig", "EditLocalizationResult", "EditLocalizationSummary", "edit_localization",
           "kn_layer_advantage", "layer_r2", "r2_increment_interval"]

TABLE_COLUMNS = [
    "fact_id", "relation", "layer", "neuron_set", "k", "neurons", "template_id", "text", "old_object", "new_object",
    "mass_share", "n_kn_in_layer", "is_kn_layer", "correct_before", "top1_after", "p_old_before", "p_old_after",
    "p_new_before", "p_new_after", "delta_p_new", "success", "flip",
]
FACT_COLUMNS = ["fact_id", "relation", "k", "kn_layer", "peak_layer", "template_id", "new_object"]


@dataclass(frozen=True)
class EditLocalizationConfig:
    lambda1: float = 1.0  # Dai et al.: remove 1 x the old answer's (rescaled) embedding
    lambda2: float = 8.0  # and write 8 x the new one's
    ig: IGConfig = IGConfig()  # attribution of the edited prompt
    seed: int = 0
    controls: bool = True  # a random same-layer control edit at each layer
    min_neurons: int = 1  # edit at least this many neurons per layer
    require_correct: bool = True  # edit only prompts the model answers correctly

    def __post_init__(self) -> None:
        if self.min_neurons < 1:
            raise ValueError(f"min_neurons must be >= 1, got {self.min_neurons}")


@dataclass(frozen=True)
class EditLocalizationSummary:
    model: str
    method: str
    n_facts: int  # facts edited
    n_layers: int
    kn_layer_success: float  # % of facts whose top-ig edit at their knowledge-neuron layer succeeds
    other_layer_success: float  # mean over facts of the % success at their other layers
    random_layer_kn_layer_success: float  # % success of the random same-layer control at the kn layer
    r2_layer: float  # R^2 of success on layer fixed effects (top-ig edits)
    r2_layer_localization: float  # ... plus mass_share
    r2_increment: float  # what mass_share adds (Hase et al.: near 0 for causal tracing and ROME)
    seed: int


@dataclass
class EditLocalizationResult:
    table: pd.DataFrame  # one row per (fact, layer, neuron set)
    facts: pd.DataFrame  # one row per edited fact
    summary: EditLocalizationSummary
    skipped: pd.DataFrame
    config: EditLocalizationConfig


@dataclass(frozen=True)
class _Edit:
    """One fact's edited prompt, its old and new answers, and its attribution scores."""

    fact: Mapping
    prompt: Prompt
    new_object: str
    new_id: int
    scores: torch.Tensor  # [n_layers, n_neurons]
    kns: list


def localization(scores: torch.Tensor, kns: Iterable) -> tuple[list[float], list[int], int]:
    r"""Per layer: mass_share_l = \sum_i max(s_{l,i}, 0) / \sum_{l',i} max(s_{l',i}, 0) and the number of
    knowledge neurons in l; and the kn layer, the layer holding most of them (ties: larger mass_share,
    then the lower layer). The mass share is NaN everywhere when no score is positive."""
    positive = scores.double().clamp(min=0).sum(dim=1)
    total = float(positive.sum())
    share = [float(p) / total if total > 0 else float("nan") for p in positive]
    counts = [0] * scores.shape[0]
    for layer, _ in kns:
        counts[int(layer)] += 1
    kn_layer = max(range(len(counts)), key=lambda l: (counts[l], share[l], -l))
    return share, counts, kn_layer


def top_neurons(scores: torch.Tensor, layer: int, k: int) -> list[tuple[int, int]]:
    """The layer's k neurons with the highest scores, highest first (ties to the lower index)."""
    order = torch.argsort(scores[layer], descending=True, stable=True)[:k]
    return [(layer, int(i)) for i in order]


def _plan(adapter: ModelAdapter, fact: Mapping, kns: list, prompts: FactPrompts, objects: list[str],
          config: EditLocalizationConfig, skips: SkipLog) -> _Edit | None:
    """Steps 1-3 for one fact, or None with the reason logged."""
    fact_id, relation = fact["fact_id"], fact["relation"]
    own = prompts.of(fact_id)
    if not own:
        skips.add("no usable prompt to edit", relation, fact_id)
        return None
    if config.require_correct:
        own = answered_correctly(adapter, own)
        if not own:
            skips.add("the model answers none of the fact's prompts correctly", relation, fact_id)
            return None
    rng = seeded_rng(config.seed, f"edit-localization/{fact_id}")
    prompt = rng.choice(own)
    template = prompts.relations[relation].templates[prompt.template_id]
    ids, single_token = single_token_ids(adapter, template)
    new_object = draw_new_object(fact["object"], objects, rng, single_token)
    if new_object is None:
        skips.add("no other single-token object in the relation to update to", relation, fact_id, f"template {prompt.template_id}")
        return None
    if len(kns) > adapter.n_neurons:
        skips.add(f"{len(kns)} knowledge neurons: more than a layer's {adapter.n_neurons} neurons", relation, fact_id)
        return None
    scores = integrated_gradients_many(adapter, [prompt.encoded], config=config.ig)[0].cpu()
    if not bool((scores > 0).any()):
        skips.add("no positive attribution score on the edited prompt (no localization)", relation, fact_id,
                  f"template {prompt.template_id}")
        return None
    return _Edit(fact, prompt, new_object, ids[new_object], scores, kns)


def _measure(adapter: ModelAdapter, edit: _Edit, neurons: list, config: EditLocalizationConfig,
             before: torch.Tensor) -> dict:
    """The edit of ``neurons`` towards t' on the fact's prompt: probabilities and top-1 before / after."""
    old_id, new_id = edit.prompt.encoded.target_id, edit.new_id
    slots = updated_value_slots(adapter, neurons, old_id, new_id, config.lambda1, config.lambda2)
    with edited_value_slots(adapter, slots):
        after = answer_distribution(adapter, edit.prompt.encoded)
    top1 = int(after.argmax())
    p_new_before, p_new_after = float(before[new_id]), float(after[new_id])
    return {"correct_before": int(before.argmax()) == old_id, "top1_after": top1,
            "p_old_before": float(before[old_id]), "p_old_after": float(after[old_id]),
            "p_new_before": p_new_before, "p_new_after": p_new_after, "delta_p_new": p_new_after - p_new_before,
            "success": top1 == new_id, "flip": top1 != old_id}


def _edit_rows(adapter: ModelAdapter, edit: _Edit, config: EditLocalizationConfig, skips: SkipLog) -> tuple[list[dict], dict]:
    """Steps 4-5: the fact's rows (every layer, top-ig and the random control) and its facts-table row."""
    fact, prompt = edit.fact, edit.prompt
    k = max(config.min_neurons, len(edit.kns))
    share, counts, kn_layer = localization(edit.scores, edit.kns)
    before = answer_distribution(adapter, prompt.encoded)
    common = {"fact_id": fact["fact_id"], "relation": fact["relation"], "k": k, "template_id": prompt.template_id,
              "text": prompt.encoded.text, "old_object": fact["object"], "new_object": edit.new_object}
    rows = []
    for layer in range(adapter.n_layers):
        where = {"layer": layer, "mass_share": share[layer], "n_kn_in_layer": counts[layer], "is_kn_layer": layer == kn_layer}
        top = top_neurons(edit.scores, layer, k)
        sets = [("top-ig", top)]
        if config.controls:
            rng = seeded_rng(config.seed, f"edit-localization/random-layer/{fact['fact_id']}/{layer}")
            try:
                sets.append(("random-layer", layer_matched_neurons(top, adapter.n_neurons, rng, exclude=edit.kns)))
            except ValueError as err:
                skips.add(f"no random-layer control: {err}", fact["relation"], fact["fact_id"], f"layer {layer}")
        for name, neurons in sets:
            rows.append({**common, **where, "neuron_set": name, "neurons": [list(n) for n in neurons],
                         **_measure(adapter, edit, neurons, config, before)})
    peak = max(range(adapter.n_layers), key=lambda l: (share[l], -l))
    fact_row = {key: common[key] for key in ("fact_id", "relation", "k", "template_id", "new_object")}
    return rows, {**fact_row, "kn_layer": kn_layer, "peak_layer": peak}


def edit_localization(
    adapter: ModelAdapter,
    refined: pd.DataFrame,
    facts: Iterable[Mapping],
    relations: Mapping[str, Relation],
    config: EditLocalizationConfig = EditLocalizationConfig(),
    population: Iterable[Mapping] | None = None,
    progress: Callable[[int], object] | None = None,
) -> EditLocalizationResult:
    """Edit every fact of ``facts`` with knowledge neurons in ``refined`` at every layer (module doc).
    ``population`` (default: ``facts``): the facts whose objects t' is drawn from (same relation)."""
    check_refined(refined)
    skips = SkipLog("edit_localization")
    facts = list(facts)
    pool = facts if population is None else list(population)
    prompts = FactPrompts(adapter, facts, relations, skips)
    kns = neurons_by_fact(refined)
    objects: dict[str, list[str]] = {}  # relation -> its facts' objects, in population order
    for f in pool:
        objects.setdefault(f["relation"], []).append(f["object"])
    rows, fact_rows = [], []
    for fact in facts:
        fact_id = fact["fact_id"]
        if fact_id not in kns:
            skips.add("no knowledge neurons in the refined table", fact["relation"], fact_id)
        else:
            edit = _plan(adapter, fact, kns[fact_id], prompts, objects.get(fact["relation"], []), config, skips)
            if edit is not None:
                new_rows, fact_row = _edit_rows(adapter, edit, config, skips)
                rows += new_rows
                fact_rows.append(fact_row)
        if progress is not None:
            progress(1)
    tag = tag_of(refined)
    table = pd.DataFrame(rows, columns=TABLE_COLUMNS)
    fact_table = pd.DataFrame(fact_rows, columns=FACT_COLUMNS)
    for frame in (table, fact_table):
        frame["model"], frame["method"], frame["seed"] = tag["model"], tag["method"], config.seed
    return EditLocalizationResult(table, fact_table, _summarise(table, adapter.n_layers, tag, config.seed), skips.frame(), config)


def _summarise(table: pd.DataFrame, n_layers: int, tag: dict, seed: int) -> EditLocalizationSummary:
    advantage = kn_layer_advantage(table) if len(table) else pd.DataFrame(columns=["at_kn_layer", "other_layers"])
    control = table[(table["neuron_set"] == "random-layer") & table["is_kn_layer"].astype(bool)]

    def percent(values: pd.Series) -> float:
        values = values.dropna().astype(float)
        return float(values.mean() * 100) if len(values) else float("nan")

    fit = layer_r2(table)
    return EditLocalizationSummary(
        model=tag["model"], method=tag["method"], n_facts=int(table["fact_id"].nunique()), n_layers=n_layers,
        kn_layer_success=percent(advantage["at_kn_layer"]), other_layer_success=percent(advantage["other_layers"]),
        random_layer_kn_layer_success=percent(control["success"]),
        r2_layer=fit["r2_layer"], r2_layer_localization=fit["r2_layer_localization"], r2_increment=fit["r2_increment"], seed=seed,
    )
