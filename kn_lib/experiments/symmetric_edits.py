"""Symmetry of knowledge-neuron edits (Niu et al., ICLR 2024, "What does the Knowledge Neuron Thesis have to
do with knowledge?"): once an edit makes "X shares a border with [Y]" answer Y', does "Y' shares a border
with [X]" answer X, and does "Y shares a border with [X]" still? Their Table 1 shows ROME failing it.

``REVERSE``: P47 (shares border with), P530 (diplomatic relation), P190 (twinned administrative body) are
symmetric, (X, r, Y) -> (Y, r, X); P36 (capital) and P1376 (capital of) inverse, (X, P36, Y) -> (Y, P1376, X)
and back. Per fact: (1) a prompt drawn among those answered correctly; (2) Y' drawn as the update draws
it (``update_plans.draw_new_object``), never X; (3) the reverse relation's prompts, subject Y' (*new
reverse*) and Y (*old reverse*), answer X; (4) section 5.1's value-slot update (-lambda1 Y + lambda2 Y') of
*all* the fact's refined knowledge neurons (the official ``select_kn`` needs >= 20 searched facts per
relation, which these relations' known facts lack), then of each matched control, weights restored each
time; ``sign_aware`` (ours) flips it for neurons firing negatively; (5) top-1 answers before and after."""

from __future__ import annotations

import math
from dataclasses import dataclass
from functools import lru_cache
from typing import Callable, Iterable, Mapping

import pandas as pd

from ..adapters import EncodedPrompt, ModelAdapter
from ..data import Relation
from ..pipeline import encode_fact
from ..refine import Neuron
from .controls import CONTROLS, matched_neurons, mean_answer_activations
from .evaluation import FactPrompts, Prompt, SkipLog, answer_readouts, answered_correctly, seeded_rng, tag_of
from .interventions import edited_value_slots, updated_value_slots
from .neuron_sets import check_refined, neurons_by_fact
from .update_plans import draw_new_object

REVERSE = {"P47": "P47", "P530": "P530", "P190": "P190", "P36": "P1376", "P1376": "P36"}
TABLE_COLUMNS = [
    "fact_id", "relation", "reverse_relation", "subject", "old_object", "new_object", "reverse_in_data", "neuron_set",
    "n_neurons", "neurons", "template_id", "text", "success", "n_paraphrases", "paraphrase_success", "n_reverse_prompts",
    "n_old_reverse_prompts", "new_reverse_before", "new_reverse_after", "old_reverse_before", "old_reverse_after",
    "p_x_new_reverse_before", "p_x_new_reverse_after"]
PROMPT_COLUMNS = [
    "fact_id", "relation", "neuron_set", "query", "template_id", "text", "answer", "correct_before", "correct_after",
    "p_answer_before", "p_answer_after", "old_answer_before", "old_answer_after"]


def reverse_relation(relation: str) -> str | None:
    """The relation whose facts reverse ``relation``'s (itself when symmetric); None when it has none."""
    return REVERSE.get(relation)


class ReverseIndex:
    """The population indexed once by (relation, subject, object), so each fact's reverse is one lookup
    (of facts with the same triple, the first: hence ``reversed``)."""

    def __init__(self, population: Iterable[Mapping]) -> None:
        self._facts = {(f["relation"], f["subject"], f["object"]): dict(f) for f in reversed(list(population))}

    def find(self, fact: Mapping) -> dict | None:
        """The fact (reverse relation, subject = fact's object, object = fact's subject), exact match."""
        reverse = reverse_relation(fact["relation"])
        return None if reverse is None else self._facts.get((reverse, fact["object"], fact["subject"]))


def find_reverse(fact: Mapping, population: Iterable[Mapping]) -> dict | None:
    """``ReverseIndex(population).find(fact)``; build a ``ReverseIndex`` once to look up many facts."""
    return ReverseIndex(population).find(fact)


@dataclass(frozen=True)
class SymmetryConfig:
    lambda1: float = 1.0  # paper (section 5.1): 1
    lambda2: float = 8.0  # paper: 8
    seed: int = 0
    controls: tuple[str, ...] = CONTROLS  # matched controls each edit is repeated on
    require_correct: bool = True  # edit only on a prompt the model answers Y to (the paper's "learned" facts)
    sign_aware: bool = False  # ours, not the paper's: flip the edit of neurons firing negatively (update_facts)

    def __post_init__(self) -> None:
        unknown = [c for c in self.controls if c not in CONTROLS]
        if unknown:
            raise ValueError(f"unknown control(s) {unknown}; expected some of {', '.join(CONTROLS)}")


@dataclass(frozen=True)
class SymmetrySummary:
    """Percent of edits (success) or mean percent of prompts (reverse rates, top-1 == X), per neuron set."""

    model: str
    method: str
    n_edits: int
    knowledge_success: float
    knowledge_new_reverse_after: float  # Niu et al.: low for KN edits (symmetry fails)
    knowledge_old_reverse_after: float
    random_layer_success: float
    random_layer_new_reverse_after: float
    random_layer_old_reverse_after: float
    activation_matched_success: float
    activation_matched_new_reverse_after: float
    activation_matched_old_reverse_after: float
    new_reverse_before: float  # before any edit: the same for every set
    old_reverse_before: float
    n_edits_old_reverse_known: int  # edits whose old reverse was answered before, on >= half its prompts
    seed: int


@dataclass
class SymmetryResult:
    table: pd.DataFrame  # one row per (edited fact, neuron set)
    prompts: pd.DataFrame  # one row per (edited fact, neuron set, query, template)
    summary: SymmetrySummary
    skipped: pd.DataFrame
    config: SymmetryConfig


@dataclass(frozen=True)
class Query:
    """One prompt read before and after an edit: its kind, answer, and (paraphrases) old answer."""

    query: str  # "edited", "paraphrase", "new-reverse" or "old-reverse"
    template_id: int
    encoded: EncodedPrompt
    answer_id: int
    old_id: int | None = None


@dataclass(frozen=True)
class SymmetryEdit:
    """Everything one fact's edit needs: the edited prompt, Y' and the prompts to read (edited first)."""

    fact: Mapping
    reverse_relation: str
    prompt: Prompt
    new_object: str
    neurons: list[Neuron]
    queries: list[Query]  # queries[0]: the edited prompt, whose answer is Y'
    reverse_in_data: bool  # the population holds the reverse fact


def read(adapter: ModelAdapter, queries: list[Query]) -> list[tuple[int, float]]:
    """(top-1 token, p(answer)) of each query, the model as it is now (batched forward passes)."""
    reads = answer_readouts(adapter, [q.encoded for q in queries], [q.answer_id for q in queries])
    return [(r.top1, r.p) for r in reads]


def symmetric_edits(adapter: ModelAdapter, refined: pd.DataFrame, facts: Iterable[Mapping], relations: Mapping[str, Relation],
                    config: SymmetryConfig = SymmetryConfig(), population: Iterable[Mapping] | None = None,
                    progress: Callable[[int], object] | None = None) -> SymmetryResult:
    """Edit each fact (module docstring), reading its reverse before and after. ``relations``: the templates of each relation
    and of its reverse; ``population`` (default ``facts``): all facts, to draw Y' and find reverses. ``progress(1)`` per fact."""
    check_refined(refined)
    facts = list(facts)
    run = _Experiment(adapter, neurons_by_fact(refined), facts, relations, config, facts if population is None else list(population))
    for relation in dict.fromkeys(f["relation"] for f in facts if reverse_relation(f["relation"]) is None):
        run.skips.add("not a symmetric or inverse relation", relation)
    rows, prompt_rows = [], []
    for fact in facts:
        edit = run.plan(fact)
        for row, per_prompt in run.edit(edit) if edit is not None else []:
            rows.append(row)
            prompt_rows += per_prompt
        if progress is not None:
            progress(1)
    tag = tag_of(refined)
    table, prompt_table = pd.DataFrame(rows, columns=TABLE_COLUMNS), pd.DataFrame(prompt_rows, columns=PROMPT_COLUMNS)
    for frame in (table, prompt_table):
        frame["model"], frame["method"], frame["seed"] = tag["model"], tag["method"], config.seed
    return SymmetryResult(table, prompt_table, summarise(table, tag, config.seed), run.skips.frame(), config)


class _Experiment:
    """The run's shared state: the population's prompts, objects and reverses, and the skip log."""

    def __init__(self, adapter: ModelAdapter, kns: dict[str, list[Neuron]], facts: list[Mapping], relations: Mapping[str, Relation],
                 config: SymmetryConfig, pool: list[Mapping]) -> None:
        self.adapter, self.kns, self.relations, self.config = adapter, kns, relations, config
        self.skips, self.index = SkipLog("symmetric_edits"), ReverseIndex(pool)
        self.prompts = FactPrompts(adapter, pool + facts, relations, self.skips)  # one entry per fact id
        self.objects: dict[str, list[str]] = {}
        for f in pool:
            self.objects.setdefault(f["relation"], []).append(f["object"])
        self.token = lru_cache(maxsize=None)(adapter.single_token)  # the object's token in a template, or None

    def plan(self, fact: Mapping) -> SymmetryEdit | None:
        """Steps 1-3 of the module docstring; None, with the reason logged, when the fact cannot be edited."""
        fact_id, relation, reverse = fact["fact_id"], fact["relation"], reverse_relation(fact["relation"])
        skip = lambda reason, item=None: self.skips.add(reason, relation, fact_id, item)  # noqa: E731
        if reverse is None:
            return None  # logged once per relation by symmetric_edits
        if fact_id not in self.kns:
            return skip("no refined knowledge neurons")
        if reverse not in self.relations:
            return skip(f"no templates of the reverse relation {reverse}")
        own = self.prompts.of(fact_id)
        if not own:
            return None  # FactPrompts logged why
        candidates = answered_correctly(self.adapter, own) if self.config.require_correct else own
        if not candidates:
            return skip("not known: the model's top-1 answer is wrong on every prompt")
        rng = seeded_rng(self.config.seed, f"symmetry/{fact_id}")
        prompt = rng.choice(candidates)
        templates = self.relations[relation].templates
        new_object = draw_new_object(fact["object"], self.objects.get(relation, []), rng,  # Y' = X would reverse to itself
                                     lambda obj: obj != fact["subject"] and self.token(obj, templates[prompt.template_id]) is not None)
        if new_object is None:
            return skip("no other single-token object in the relation to update to")
        queries = [Query("edited", prompt.template_id, prompt.encoded, self.token(new_object, templates[prompt.template_id]))]
        paraphrases = [(p, self.token(new_object, templates[p.template_id])) for p in own if p.template_id != prompt.template_id]
        for p in [p for p, new_id in paraphrases if new_id is None]:
            skip("new object Y' is several tokens in this paraphrase", f"template {p.template_id}")
        queries += [Query("paraphrase", p.template_id, p.encoded, new_id, p.encoded.target_id)
                    for p, new_id in paraphrases if new_id is not None]
        for query, subject in (("new-reverse", new_object), ("old-reverse", fact["object"])):
            swapped = {"fact_id": fact_id, "relation": reverse, "subject": subject, "object": fact["subject"]}
            usable, unusable = encode_fact(self.adapter, swapped, self.relations[reverse].templates)
            if any(row["template_id"] is None for row in unusable):
                return skip("reverse answer X is several tokens")
            for row in unusable if query == "new-reverse" else []:  # the old reverse's are the same templates
                skip(row["reason"], f"{reverse} template {row['template_id']}")
            if not usable:
                return skip(f"no usable {query} prompt")
            queries += [Query(query, t, p, p.target_id) for t, p in usable]
        return SymmetryEdit(fact, reverse, prompt, new_object, self.kns[fact_id], queries, self.index.find(fact) is not None)

    def edit(self, edit: SymmetryEdit) -> list[tuple[dict, list[dict]]]:
        """Steps 4-5: every query read before, then after editing the knowledge neurons and each control
        (the weights restored exactly after each); one (table row, prompt rows) per neuron set."""
        fact_id, config = edit.fact["fact_id"], self.config
        # once per fact, on the unedited model (every control is chosen before any edit)
        activations = lru_cache(maxsize=1)(lambda: mean_answer_activations(self.adapter, self.prompts, [fact_id]))
        sets = [("knowledge", edit.neurons)]
        for kind in config.controls:
            try:
                sets.append((kind, matched_neurons(kind, edit.neurons, self.adapter.n_neurons, edit.neurons,
                                                   lambda: seeded_rng(config.seed, f"symmetry/{kind}/{fact_id}"), activations)))
            except ValueError as err:
                self.skips.add(f"no {kind} control: {err}", edit.fact["relation"], fact_id)
        before, out = read(self.adapter, edit.queries), []
        acts = self.adapter.activations(edit.prompt.encoded) if config.sign_aware else None
        for name, neurons in sets:
            signs = {n: 1.0 if acts[n] >= 0 else -1.0 for n in neurons} if acts is not None else None
            slots = updated_value_slots(self.adapter, neurons, edit.prompt.encoded.target_id, edit.queries[0].answer_id,
                                        config.lambda1, config.lambda2, signs)
            with edited_value_slots(self.adapter, slots):
                after = read(self.adapter, edit.queries)
            out.append(_rows(self.adapter, edit, name, neurons, before, after))
        return out


def _rows(adapter: ModelAdapter, edit: SymmetryEdit, name: str, neurons: list[Neuron], before: list,
          after: list) -> tuple[dict, list[dict]]:
    """The table row of one (fact, neuron set) and its prompt rows."""
    fact, count = edit.fact, lambda kind: sum(q.query == kind for q in edit.queries)

    def share(kind: str, reads: list, p: bool = False) -> float:  # mean of top-1 == answer, or of p(answer)
        values = [pr if p else top == q.answer_id for q, (top, pr) in zip(edit.queries, reads) if q.query == kind]
        return sum(values) / len(values) if values else math.nan

    row = {
        "fact_id": fact["fact_id"], "relation": fact["relation"], "reverse_relation": edit.reverse_relation,
        "subject": fact["subject"], "old_object": fact["object"], "new_object": edit.new_object,
        "reverse_in_data": edit.reverse_in_data, "neuron_set": name, "n_neurons": len(neurons),
        "neurons": [list(n) for n in neurons], "template_id": edit.prompt.template_id, "text": edit.prompt.encoded.text,
        "success": after[0][0] == edit.queries[0].answer_id, "n_paraphrases": count("paraphrase"),
        "paraphrase_success": share("paraphrase", after), "n_reverse_prompts": count("new-reverse"),
        "n_old_reverse_prompts": count("old-reverse"),
        "new_reverse_before": share("new-reverse", before), "new_reverse_after": share("new-reverse", after),
        "old_reverse_before": share("old-reverse", before), "old_reverse_after": share("old-reverse", after),
        "p_x_new_reverse_before": share("new-reverse", before, p=True), "p_x_new_reverse_after": share("new-reverse", after, p=True),
    }
    prompt_rows = [
        {"fact_id": fact["fact_id"], "relation": fact["relation"], "neuron_set": name, "query": q.query,
         "template_id": q.template_id, "text": q.encoded.text, "answer": adapter.tokenizer.decode([q.answer_id]).strip(),
         "correct_before": b == q.answer_id, "correct_after": a == q.answer_id, "p_answer_before": pb, "p_answer_after": pa,
         "old_answer_before": None if q.old_id is None else b == q.old_id,
         "old_answer_after": None if q.old_id is None else a == q.old_id}
        for q, (b, pb), (a, pa) in zip(edit.queries, before, after) if q.query != "edited"
    ]
    return row, prompt_rows


def summarise(table: pd.DataFrame, tag: Mapping[str, str], seed: int) -> SymmetrySummary:
    """Percents over edits per neuron set (NaN for a set that did not run); before-rates from the KN rows."""
    def percent(name: str, column: str) -> float:
        values = table.loc[table["neuron_set"] == name, column].astype(float)
        return float(values.mean() * 100) if len(values) else math.nan

    per_set = {f"{name.replace('-', '_')}_{column}": percent(name, column)
               for name in ("knowledge", *CONTROLS) for column in ("success", "new_reverse_after", "old_reverse_after")}
    known = table[table["neuron_set"] == "knowledge"]
    return SymmetrySummary(model=tag["model"], method=tag["method"], n_edits=len(known), **per_set,
                           new_reverse_before=percent("knowledge", "new_reverse_before"),
                           old_reverse_before=percent("knowledge", "old_reverse_before"),
                           n_edits_old_reverse_known=int((known["old_reverse_before"] >= 0.5).sum()), seed=seed)
