"""What each edit of Table 6 takes (``update_facts``, steps 1-3 of its docstring): the config, which of a
fact's knowledge neurons are edited (the official ``select_kn`` or ours), and the draws of the facts, the
new answer t' and the perplexity prompts, under the official sampling or ours.

Apart from ``update_facts`` because these choices are where the paper and the official script differ
(the module docstring there lists them); ``draw_new_object`` and ``single_token_ids`` also serve the
critiques' edits (``edit_localization``, ``symmetric_edits``).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable, Iterator, Literal, Mapping

from ..adapters import ModelAdapter
from .evaluation import FactPrompts, Prompt, SkipLog, answer_distribution
from .controls import ALL_CONTROLS, CONTROLS


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
