"""What the book's chapters share: the committed sample they read, and paper-vs-ours tables.

A chapter names its sample once (``BookSample(model=..., facts_per_relation=...)``) and reads every
stage's results through it, so that switching a chapter to another model or a bigger run is one
parameter. Nothing here computes a result: it reads the ``kn`` command's files and the paper's numbers.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Iterable

import pandas as pd

from . import paper
from ..run import results


# The readings the experiments had before the official scripts' became their defaults (issue: "the last
# official definitions"), as stage options: results computed then are found under them, as the named
# variants they now are. A chapter that reads such a run passes them and says which numbers use them.
EARLIER_DEFINITIONS: tuple[tuple[str, Any], ...] = (
    ("unrelated_pool", "sample"),  # suppress-amplify: unrelated facts from the sample, not from all facts
    ("selection", "ours"), ("sampling", "ours"),  # update: our neuron filter and sampling, not select_kn's
    ("ties", "index"), ("erased_facts", "sample"),  # erase: ties by index, the erased relation's sample only
    ("relation_mean", "present"),  # bingrel: Table 4 over relations with data, not 0 for the others
    # and the tables before changed predictions and matched controls were recorded (issue: "is it the neurons?")
    ("flips", False), ("controls", False),  # suppress-amplify's flip columns; update's matched-control edits
)


@dataclass(frozen=True)
class BookSample:
    """A fact sample run by ``kn run --preset PRESET --model MODEL --facts-per-relation N``."""

    model: str = "smollm2-135m"
    preset: str = "book-sample"
    facts_per_relation: int | None = 10
    method: str = "ig"  # the method of the run; experiment stages also hold the activation baseline
    relations: tuple[str, ...] | None = None  # None: the preset's (all 34 for book-sample)
    share_rule: str = "official"  # refinement rule of the run: "official" (default) or "paper" (the text's)
    # stage options of the run (``kn ... --NAME VALUE``), e.g. ``EARLIER_DEFINITIONS`` for runs made before
    # the official definitions became the defaults
    params: tuple[tuple[str, Any], ...] = ()

    def _overrides(self) -> dict[str, Any]:
        out: dict[str, Any] = {}
        if self.facts_per_relation is not None:
            out["facts_per_relation"] = self.facts_per_relation
        if self.method != "ig":
            out["method"] = self.method
        if self.relations is not None:
            out["relations"] = list(self.relations)
        if self.share_rule != "official":
            out["share_rule"] = self.share_rule
        if self.params:
            out["params"] = dict(self.params)
        return out

    def settings(self):
        """The run's ``RunSettings`` (fact sample, seed, attribution settings)."""
        from ..run.registry import settings_for

        return settings_for(self.model, self.preset, **self._overrides())

    def facts(self, relations: Iterable[str] | None = None) -> list[dict]:
        """The sample's facts (dicts with fact_id, relation, subject, object), of ``relations`` or all."""
        wanted = None if relations is None else set(relations)
        return [dict(f) for rel, facts in self.settings().sample().items() if wanted is None or rel in wanted for f in facts]

    def load(self, stage: str, table: str | None = None, **kwargs) -> pd.DataFrame:
        """A table of a stage for this sample (``results.load`` with the sample's settings; ``params=``
        adds stage options to the sample's own)."""
        overrides = self._overrides()
        if "params" in kwargs:
            overrides["params"] = {**overrides.get("params", {}), **kwargs.pop("params")}
        return results.load(self.model, stage, table, preset=self.preset, **overrides, **kwargs)

    def key(self, stage: str) -> str:
        """The results key (settings directory) of a stage for this sample."""
        from ..run.registry import stage_registry

        return results.cache_key(stage_registry()[stage].key_settings(self.settings()))

    def manifest(self, stage: str) -> dict:
        """The stage's manifest: settings, and per shard its facts, seconds, backend and commit."""
        return results.manifest(self.model, stage, self.key(stage))

    def saved_units(self, stage: str) -> dict[str, list[str]]:
        """Of a stage not finished yet, what its long shards saved so far, {shard: units} (the erase: erased
        relations; ``kn_lib.run.partial``), to say how far it got."""
        from ..run.partial import saved_units
        from ..run.result_store import ResultStore
        from ..run.store import default_root

        return saved_units(ResultStore(default_root(), self.model, stage, self.key(stage)).dir)

    def summary(self, stage: str) -> pd.DataFrame:
        """The stage's summary, one row per neuron set, indexed by method (``ig``, ``activation``, ...)."""
        return self.load(stage, "summary").set_index("method")

    def progress(self, stage: str) -> str:
        """What a stage still being computed has saved: "saved so far: <shard> <n> (<units>); ..." (a long
        shard's units, ``saved_units``), or "" when no shard is part-way."""
        saved = self.saved_units(stage)
        if not saved:
            return ""
        return "saved so far: " + "; ".join(f"{shard} {len(units)} ({', '.join(units)})" for shard, units in saved.items())

    def committed(self, stage: str, table: str = "table") -> tuple[pd.DataFrame | None, str]:
        """A stage's committed rows and what a page says of them: (table, "") when finished; (table,
        "not finished; saved so far: ...") when some shards are still being computed; (None, why) when
        there are no rows: "not run (or not finished)", "not finished; saved so far: ..." (a long shard's
        units, ``saved_units``), or "has no rows: nothing could be done ..." (every shard finished empty)."""
        progress = self.progress(stage)
        so_far = f"not finished; {progress}"
        try:
            rows = self.load(stage, table)
        except results.ResultsNotFound:
            rows = None
        if rows is not None and not rows.empty:
            return rows, so_far if progress else ""
        if progress:
            return None, so_far
        if rows is None or not self.manifest(stage)["shards"]:  # not run, or started with no shard finished
            return None, "not run (or not finished)"
        return None, "has no rows: nothing could be done (its skipped table says why)"


def paper_vs_ours(rows: Iterable[tuple[str, str, float]], model: str, digits: int = 2) -> pd.DataFrame:
    """A side-by-side table: ``rows`` are (quantity, paper key in ``kn_lib.paper``, our value)."""
    out = []
    for quantity, key, ours in rows:
        number = paper.NUMBERS[key]
        out.append({
            "quantity": quantity,
            "where": number.where,
            f"paper ({paper.MODEL})": round(number.value, digits),
            f"ours ({model})": round(float(ours), digits),
        })
    return pd.DataFrame(out)


@dataclass(frozen=True)
class Screen:
    """A model's committed ``kn screen --preset paper`` results: per fact, per prompt, per relation."""

    model: str
    facts: pd.DataFrame
    prompts: pd.DataFrame
    by_relation: pd.DataFrame  # ``recall.recall_by_relation``
    seconds: float  # compute time of the finished shards (the manifest's record)
    relations_done: int


def load_screen(model: str) -> Screen | None:
    """The model's screen over all facts (the finished relations of it), or None if it was never run."""
    from ..recall import recall_by_relation
    from ..run.registry import screen_key

    store = results.ResultStore(results.default_root(), model, "screen", screen_key(model))
    if not store.exists():
        return None
    facts, prompts, shards = store.read("facts"), store.read("prompts"), store.entries()
    return Screen(model, facts, prompts, recall_by_relation(facts, prompts), float(sum(e.get("seconds", 0.0) for e in shards.values())),
                  len(shards))


KNOWN_FACTS = dict(preset="known-facts", facts_per_relation=30)  # kn run --preset known-facts (its own size)
# the official-definition runs on known facts (and the uniform sample's, made with the same options): the
# paper's 10 edits per relation (the known-facts preset asks 30), and the other relations' perplexity under
# an erasure on a uniform sample of 300 of their facts (all: hours)
KNOWN_OFFICIAL: tuple[tuple[str, Any], ...] = (("edits_per_relation", 10), ("max_other_facts", 300))
# the runs made before the official definitions: our earlier readings, 30 edits per relation asked
KNOWN_EARLIER: tuple[tuple[str, Any], ...] = EARLIER_DEFINITIONS + (("edits_per_relation", 30),)


def known_facts_sample(model: str = "smollm2-135m", facts_per_relation: int | None = None,
                       params: tuple[tuple[str, Any], ...] = KNOWN_OFFICIAL) -> BookSample:
    """Facts the model knows (its screen: most prompts answered top-1), up to 30 per relation (or
    ``facts_per_relation``: a run of another size, such as the edits' larger one or a slower model's
    smaller one): the sample of the experiments that change what the model says about a fact
    (suppress/amplify, update, erase). ``params``: the run's stage options (default: the official
    definitions' runs, ``KNOWN_OFFICIAL``; ``KNOWN_EARLIER`` for those made before them)."""
    size = KNOWN_FACTS["facts_per_relation"] if facts_per_relation is None else facts_per_relation
    return BookSample(model=model, **{**KNOWN_FACTS, "facts_per_relation": size}, params=params)


def side_by_side(samples: "dict[str, BookSample]", stage: str, table: str | None = "summary", **kwargs) -> tuple[pd.DataFrame, list[str]]:
    """One stage's table for several samples, stacked under a first column ``sample`` (the dict's
    keys), and the names of the samples whose results are not committed (left out, to be said so)."""
    frames, missing = [], []
    for name, sample in samples.items():
        try:
            frame = sample.load(stage, table, **kwargs)
        except results.ResultsNotFound:
            missing.append(name)
            continue
        frames.append(frame.assign(sample=name)[["sample", *frame.columns]])
    return (pd.concat(frames, ignore_index=True) if frames else pd.DataFrame(columns=["sample"])), missing


SIZE_COLUMNS = {"n_facts": "facts", "n_relations": "relations", "n_edits": "edits"}


def sample_sizes(sample: BookSample, stages: Iterable[str]) -> pd.DataFrame:
    """What each stage's committed summary rests on: one row per (stage, method) with the counts of
    facts, relations and edits that its summary reports; stages without results are left out."""
    rows = []
    for stage in stages:
        try:
            summary = sample.load(stage, "summary")
        except results.ResultsNotFound:
            continue
        for _, row in summary.drop_duplicates("method").iterrows():
            sizes = {label: int(row[col]) for col, label in SIZE_COLUMNS.items() if col in row.index and pd.notna(row[col])}
            rows.append({"model": sample.model, "stage": stage, "method": row["method"], **sizes})
    return pd.DataFrame(rows)


def repository_file(relative: str) -> "Path":
    """A file of the kn-book checkout that ``kn_lib`` runs from (e.g. ``benchmarks/results/machine.csv``),
    so that a chapter, or its downloaded ``.ipynb``, finds it whatever the working directory."""
    from pathlib import Path

    path = Path(__file__).resolve().parents[2] / relative
    if not path.exists():
        raise FileNotFoundError(f"{path}: not in this checkout (is kn_lib installed from the repository, `pip install -e .`?)")
    return path


def editable_by_relation(sample: BookSample, max_share: float = 0.1) -> pd.DataFrame:
    """How many edits the official ``select_kn`` allows, per relation of ``sample``: the bags it counts
    over (``n_bags``: the largest committed search of the relation, as ``kn update`` reads them), the
    sample's facts with knowledge neurons, and those of them with a neuron that ``select_kn`` keeps
    (count over the bags, own included, at most ``max_share`` of them). With fewer than 20 bags no
    neuron can be kept. Reads committed refine results; computes no model output."""
    from ..experiments.neuron_sets import neurons_by_fact
    from ..experiments.update_plans import official_selection
    from ..run.experiment_inputs import largest_bags
    from ..run.registry import StageContext

    settings = sample.settings()
    refined = sample.load("refine")
    prompts = sample.load("attribute", "prompts")
    searched = prompts[["fact_id", "relation"]].drop_duplicates()
    relations = settings.relation_ids()
    bags = largest_bags(StageContext("update", settings, results.default_root()), settings, relations, refined, searched)
    kns = neurons_by_fact(refined)
    rows = []
    for relation in relations:
        with_kn = [f for f in searched.loc[searched["relation"] == relation, "fact_id"] if kns.get(f)]
        relation_bags = bags.get(relation, {})
        kept = [f for f in with_kn if official_selection(f, kns, relation_bags)]
        rows.append({"relation": relation, "n_bags": len(relation_bags), "n_facts_with_kn": len(with_kn),
                     "n_facts_editable": len(kept)})
    return pd.DataFrame(rows)
