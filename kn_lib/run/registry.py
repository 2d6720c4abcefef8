"""What a run computes: settings, presets, the fact sample, and a registry of stages.

A *stage* (``Stage``) turns settings into sharded result tables: ``plan`` lists the shards (``Job``),
``compute`` fills one shard, ``key_settings`` says which settings its results depend on (their hash is
the results directory's key). This module imports no stage: the definitions import it and register
themselves (``kn_lib.run.search_stages``: ``attribute`` and ``refine``; ``kn_lib.run.experiment_stages``:
the paper's experiments), and ``kn_lib.run``'s ``__init__`` imports them, so the ``kn`` command, the
runner (local or Ray) and ``results.load`` find every stage here.

The fact sample is model independent: per relation, the facts of ``query_pairs.json`` in an order
drawn with ``(seed, relation)``, first ``facts_per_relation`` of them. A larger sample with the same
seed contains the smaller one, so finished attribution shards are reused when a sample grows.

A *known-facts* sample (``known="any"`` or ``"most"``) is model dependent: the same order, restricted to
the facts whose answer is one token and which the model's ``screen`` (``kn screen --preset paper``)
marks as known: some prompt answered top-1 (``any``), or more than half of them (``most``). The
experiments that need the model to hold the fact (suppress/amplify, update, erase) draw from it.
"""

from __future__ import annotations

import math
import numbers
import zlib
from dataclasses import asdict, dataclass, field, replace
from functools import lru_cache
from pathlib import Path
from typing import Any, Callable, Mapping, Sequence

from .. import data, sources
from ..attribution import MAX_STEPS, IGConfig
from ..pipeline import KNConfig

DEFAULT_CHUNK = 8  # facts per attribution shard: small enough to lose little to a crash


class KnUsageError(ValueError):
    """Bad input from the user (unknown relation, preset, unwritable output...); one-line message."""


class MissingInputs(RuntimeError):
    """A stage's input stage has not finished the shards it needs."""


@dataclass(frozen=True)
class RunSettings:
    """Everything a run depends on; each stage's ``key_settings`` picks what its results depend on
    (never ``device``: where a shard ran is recorded in the manifest, not hashed)."""

    model: str
    relations: tuple[str, ...] | None = None  # None: the paper's 34 relations
    facts_per_relation: int | None = None  # None: every fact of each relation
    seed: int = 0
    config: KNConfig = field(default_factory=KNConfig)
    chunk_size: int = DEFAULT_CHUNK
    device: str = "auto"  # "cpu", "cuda" or "auto"; not part of any key
    params: tuple[tuple[str, Any], ...] = ()  # options of registered stages (``Stage.options``)
    known: str | None = None  # None: facts drawn uniformly; "any" / "most": facts the model's screen marks as known
    root: str | None = None  # results root holding the screen (known samples); not part of any key

    def relation_ids(self) -> list[str]:
        return list(self.relations) if self.relations is not None else data.relation_ids()

    def param(self, name: str, default: Any = None) -> Any:
        return dict(self.params).get(name, default)

    def load_relations(self) -> dict[str, data.Relation]:
        return _relations(tuple(self.relation_ids()))

    def sample(self) -> dict[str, list[dict]]:
        """Relation -> its sampled facts, in sample order (known samples: the known facts in that order)."""
        if self.known is None:
            return {r: _ordered_facts(r, self.seed)[: self.facts_per_relation] for r in self.relation_ids()}
        known = known_fact_ids(self.model, self.known, self.relation_ids(), self.root)
        return {r: [f for f in _ordered_facts(r, self.seed) if f["fact_id"] in known][: self.facts_per_relation]
                for r in self.relation_ids()}

    def sample_key(self) -> dict[str, Any]:
        """What the sample depends on beyond seed and size: nothing for a uniform sample; for a known
        sample, the rule and the screen's results key (a new screen, a new sample)."""
        if self.known is None:
            return {}
        return {"known": self.known, "screen_key": screen_key(self.model)}

    def selected_fact_ids(self) -> list[str]:
        return [f["fact_id"] for facts in self.sample().values() for f in facts]


def data_checksums() -> dict[str, str]:
    """sha256 of every upstream file the facts and prompts come from (``DataSource`` checks them)."""
    used = [data.QUERY_PAIRS, data.RELATIONS] + [p for p in sources.SHA256 if p.startswith("pararel/patterns/")]
    return {p: sources.SHA256[p] for p in sorted(used)}


KNOWN_RULES = {"any": "any_correct", "most": "most_correct"}


def screen_key(model: str) -> str:
    """The results key of the model's screen over all facts (``kn screen --preset paper``)."""
    from .store import cache_key

    return cache_key(stage_registry()["screen"].key_settings(settings_for(model, "paper")))


def known_fact_ids(model: str, rule: str, relations: Sequence[str], root: str | Path | None = None) -> frozenset[str]:
    """Facts of ``relations`` with a single-token answer that the model's screen marks as known by ``rule``."""
    from .result_store import ResultStore
    from .store import default_root

    where = Path(root) if root is not None else default_root()
    store = ResultStore(where, model, "screen", screen_key(model))
    command = f"kn screen --preset paper --model {model}" + ("" if where == default_root() else f" --out {where}")
    if not store.exists():
        raise MissingInputs(f"a known-facts sample needs the model's screen: run `{command}` first (nothing at {store.dir})")
    entries = store.entries()
    missing = [r for r in relations if r not in entries]
    if missing:
        raise MissingInputs(f"the screen of {model} at {store.dir} lacks {len(missing)} relation(s) ({', '.join(missing[:3])}"
                            f"{', ...' if len(missing) > 3 else ''}); run `{command}` to finish it")
    stamp = tuple(repr(sorted(entries[r].items())) for r in sorted(relations))  # a recomputed shard: read again
    return _known_in_store(str(store.root), model, store.key, rule, tuple(sorted(relations)), stamp)


@lru_cache(maxsize=16)
def _known_in_store(root: str, model: str, key: str, rule: str, relations: tuple[str, ...], _stamp: tuple[str, ...]) -> frozenset[str]:
    from .result_store import ResultStore

    facts = ResultStore(root, model, "screen", key).read("facts", list(relations))
    return frozenset(facts.loc[facts["single_token"] & facts[KNOWN_RULES[rule]], "fact_id"])


@lru_cache(maxsize=8)
def _relations(ids: tuple[str, ...]) -> dict[str, data.Relation]:
    return data.load_relations(ids)


@lru_cache(maxsize=64)
def _ordered_facts(relation: str, seed: int) -> list[dict]:
    import numpy as np

    facts = data.load_facts([relation]).to_list()
    order = np.random.default_rng([seed, zlib.crc32(relation.encode())]).permutation(len(facts))
    return [facts[i] for i in order]


# -- presets ---------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Preset:
    """A named fact sample and chain of stages, so the book and the command agree on what was run."""

    name: str
    help: str
    relations: tuple[str, ...] | None
    facts_per_relation: int | None
    seed: int = 0
    stages: tuple[str, ...] = ("attribute", "refine")
    known: str | None = None  # a known-facts sample (``RunSettings.known``)
    params: tuple[tuple[str, Any], ...] = ()  # stage options the preset sets (a given option overrides them)


PRESETS: dict[str, Preset] = {}


def register_preset(preset: Preset) -> None:
    PRESETS[preset.name] = preset


register_preset(Preset("smoke", "2 relations x 2 facts: checks that the chain runs", ("P30", "P36"), 2))
register_preset(Preset("book-sample", "all 34 relations x 20 facts per relation (seed 0): the book's sample", None, 20))
register_preset(Preset("paper", "all 34 relations, every fact (27,738): the paper's fact set", None, None))
register_preset(Preset(
    "known-facts", "all 34 relations x up to 30 facts the model knows (most prompts top-1, from its screen; seed 0), 30 edits "
    "per relation, erasing every relation with at least 20 of them: the experiments that need a known fact", None, 30,
    stages=("attribute", "refine", "statistics", "suppress-amplify", "update", "erase"), known="most",
    params=(("edits_per_relation", 30),)))

DEFAULT_PRESET = "book-sample"


def settings_for(
    model: str,
    preset: str | None = None,
    *,
    relations: Sequence[str] | str | None = None,
    facts_per_relation: int | None = None,
    seed: int | None = None,
    steps: int | None = None,
    method: str | None = None,
    threshold: float | None = None,
    share_rule: str | None = None,
    chunk_size: int | None = None,
    device: str | None = None,
    params: Mapping[str, Any] | None = None,
    known: str | None = None,
    root: str | Path | None = None,
) -> RunSettings:
    """Settings of a preset (default ``book-sample``) with the given fields overridden; validated."""
    name = preset or DEFAULT_PRESET
    if name not in PRESETS:
        raise KnUsageError(f"unknown preset {name!r} (known: {', '.join(PRESETS)})")
    base = PRESETS[name]
    if isinstance(relations, str):
        given, relations = relations, [r.strip() for r in relations.split(",") if r.strip()]
        if not relations:
            raise KnUsageError(f"--relations {given!r}: no relation id (expected e.g. P19,P36)")
    rel = tuple(relations) if relations else base.relations
    if rel is not None:
        paper_relations = data.relation_ids()
        unknown = [r for r in rel if r not in paper_relations]
        if unknown:
            raise KnUsageError(f"unknown relation {', '.join(unknown)} (the paper's relations: {', '.join(paper_relations)})")
        rel = tuple(dict.fromkeys(rel))
    n = facts_per_relation if facts_per_relation is not None else base.facts_per_relation
    if n is not None and n < 1:
        raise KnUsageError(f"--facts-per-relation must be >= 1, got {n}")
    if seed is not None and (not isinstance(seed, int) or seed < 0):
        raise KnUsageError(f"--seed must be an integer >= 0, got {seed}")
    config = KNConfig()
    if method is not None:
        if method not in ("ig", "activation"):
            raise KnUsageError(f"unknown method {method!r} (use ig or activation)")
        config = replace(config, method=method)
    if threshold is not None:
        if not 0 <= threshold < 1:
            raise KnUsageError(f"--threshold must be in [0, 1), got {threshold}")
        config = replace(config, threshold=float(threshold))
    if share_rule is not None:
        if share_rule not in ("official", "paper"):
            raise KnUsageError(f"unknown share rule {share_rule!r} (use official or paper)")
        config = replace(config, share_rule=share_rule)
    if steps is not None:
        if isinstance(steps, bool) or not isinstance(steps, numbers.Integral) or not 1 <= steps <= MAX_STEPS:
            raise KnUsageError(f"--steps must be an integer from 1 to {MAX_STEPS}, got {steps!r}")
        config = replace(config, ig=replace(config.ig, steps=steps))
    chunk = chunk_size if chunk_size is not None else DEFAULT_CHUNK
    if chunk < 1:
        raise KnUsageError(f"--chunk-size must be >= 1, got {chunk}")
    if device not in (None, "auto", "cpu", "cuda"):
        raise KnUsageError(f"unknown device {device!r} (use cpu, cuda or auto)")
    rule = known if known is not None else base.known
    if rule == "none":
        rule = None
    if rule is not None and rule not in KNOWN_RULES:
        raise KnUsageError(f"unknown --known {rule!r} (use any, most or none)")
    return RunSettings(
        model=model, relations=rel, facts_per_relation=n, seed=base.seed if seed is None else seed, config=config,
        chunk_size=chunk, device=device or "auto", params=tuple(sorted({**dict(base.params), **(params or {})}.items())), known=rule,
        root=str(root) if root is not None else None,
    )


# -- stages ----------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Job:
    """One shard to compute: self-contained (a Ray worker needs nothing else) but for stage inputs,
    which ``compute`` reads from the results directory through ``StageContext.inputs``."""

    shard: str  # unique within the stage's results directory, e.g. "P19/chunk-00003"
    relation: str
    facts: tuple[Mapping, ...]
    templates: tuple[str, ...] = ()

    @property
    def fact_ids(self) -> list[str]:
        return [f["fact_id"] for f in self.facts]


@dataclass(frozen=True)
class StageContext:
    """What ``plan`` and ``compute`` may use: the settings and where results live."""

    stage: str
    settings: RunSettings
    root: Path

    def inputs(self, stage: str):
        """The results store of another stage for the same settings (e.g. refine reads attribute)."""
        from .result_store import ResultStore
        from .store import cache_key

        spec = stage_registry()[stage]
        return ResultStore(self.root, self.settings.model, stage, cache_key(spec.key_settings(self.settings)))


@dataclass(frozen=True)
class Option:
    """A stage's own command-line option, stored in ``RunSettings.params`` under ``name``."""

    name: str  # "--alpha" on the command line, "alpha" in params
    type: Callable[[str], Any] = str
    default: Any = None
    help: str = ""
    choices: tuple[str, ...] | None = None  # allowed values, checked once for the command line and the library

    def check(self, settings: "RunSettings") -> Any:
        """The option's value in ``settings`` (None when not given), or ``KnUsageError`` if not among ``choices``."""
        value = settings.param(self.name)
        if value is not None and self.choices is not None and value not in self.choices:
            raise KnUsageError(f"--{self.name.replace('_', '-')} must be {' or '.join(self.choices)}, got {value!r}")
        return value


def holds_facts(entry: Mapping, job: Job) -> bool:
    """``Stage.covers``' default, for shards whose rows are computed per fact, each fact on its own
    (attribute): the entry holds every fact of the job. The runner also reuses the facts of such a shard
    when a larger sample's job needs more of them (it computes only the missing ones)."""
    return set(job.fact_ids) <= set(entry.get("fact_ids", ()))


@dataclass(frozen=True)
class Stage:
    """A registered stage. ``compute(ctx, job, adapter, on_fact) -> {table: DataFrame}`` calls
    ``on_fact(1)`` after each fact (progress); ``adapter`` is None when ``needs_model`` is False."""

    name: str
    help: str
    tables: tuple[str, ...]  # the first is what ``results.load`` returns by default
    key_settings: Callable[[RunSettings], dict]
    plan: Callable[[StageContext], list[Job]]
    compute: Callable[..., dict]
    needs_model: bool = True
    depends: tuple[str, ...] = ()
    options: tuple[Option, ...] = ()
    # is a finished shard's manifest entry good for this job? default: it holds all the job's facts
    covers: Callable[[Mapping, Job], bool] = holds_facts
    # its rows are about the run's fact sample (``results.load`` keeps the preset's facts and relations);
    # False for a stage with its own data (grammar: BLiMP), whose ``relation`` column is not a PARAREL one
    uses_sample: bool = True


def same_facts(entry: Mapping, job: Job) -> bool:
    """``Stage.covers`` for shards over a whole sample (refine, experiments): finished for exactly the job's
    facts. A known-facts sample changes if its screen is recomputed and a fact's status flips; its keys
    do not (they hold the screen's settings), so the facts themselves are compared."""
    return "fact_ids" not in entry or set(entry["fact_ids"]) == set(job.fact_ids)


_STAGES: dict[str, Stage] = {}


def register_stage(stage: Stage) -> Stage:
    """Add (or replace) a stage; ``kn <name>`` and ``kn run`` presets listing it then run it."""
    _STAGES[stage.name] = stage
    return stage


def stage_registry() -> dict[str, Stage]:
    """Every registered stage by name (filled when ``kn_lib.run`` imports the stage definitions)."""
    return _STAGES


def chunks(facts: Sequence[Mapping], size: int) -> list[tuple[Mapping, ...]]:
    return [tuple(facts[i * size : (i + 1) * size]) for i in range(math.ceil(len(facts) / size))]


def common_key_settings(settings: RunSettings) -> dict[str, Any]:
    """What every model-based stage depends on: model, data, seed, kn_lib version."""
    from .. import __version__
    from ..model_registry import describe_model

    return {
        "model": settings.model, "model_description": describe_model(settings.model), "data_sha256": data_checksums(),
        "seed": settings.seed, "kn_lib_version": __version__,
    }


STORED_THRESHOLD = 0.2  # coarse neurons are stored down to this t; refine applies any larger t


def stored_threshold(config: KNConfig) -> float:
    """t at which the attribute stage stores coarse neurons: min(t, 0.2), so that the baseline's 0.5 and any
    t >= 0.2 reuse the same attribution shards (refine applies t; ``kn_stages.above_threshold``)."""
    return min(config.coarse_threshold, STORED_THRESHOLD)


KEY_BATCH_ROWS = 200  # see ig_settings


def ig_settings(config: KNConfig) -> dict[str, Any]:
    """What attribution shards depend on (the stored threshold, not t: refine applies t). Scores do not
    depend on ``IGConfig.batch_rows`` (tested), so the key does not either: it holds the constant 200,
    the default when the committed results were computed, so that they keep their keys."""
    return {"method": config.method, "ig": {**asdict(config.ig), "batch_rows": KEY_BATCH_ROWS}, "threshold": stored_threshold(config)}


__all__ = [
    "holds_facts", "same_facts", "DEFAULT_CHUNK", "DEFAULT_PRESET", "IGConfig", "Job", "KNConfig", "KnUsageError", "MissingInputs", "Option", "PRESETS", "Preset",
    "RunSettings", "Stage", "StageContext", "chunks", "common_key_settings", "data_checksums", "register_preset",
    "register_stage", "settings_for", "stage_registry", "stored_threshold",
]
