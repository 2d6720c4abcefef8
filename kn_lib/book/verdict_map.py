"""The verdict map: the first table a reader sees. One row per claim of the paper and per model, on the
best committed design, with the interval, n, the paper's value, whether the knowledge neurons beat both
matched controls, and the verdict in words.

The best design is the one the claims chapter's headline uses (``best_design_groups``): facts the model
knows under the official definitions for the experiments that change what it says (Figures 4-5, Tables
5-6), the widest uniform sample for the identification claim (Table 2), and the small uniform run for
what was not rerun (BingRel, Table 4). ``MAP_CLAIMS`` names the rows; ``verdict_map`` reads the claims,
control and critique tables the claims chapter computes, so that the map and the chapter can never
disagree.
"""

from __future__ import annotations

from dataclasses import dataclass

import pandas as pd

from . import KNOWN_EARLIER, BookSample, known_facts_sample
from .claim_tables import DEFINITION_FREE, claim_cell, load_first, official_then_earlier, paper_cell, tables_by_sample
from .claims import claims_by_sample
from .wording import plural

# the designs behind the headline, per model (the claims chapter's parameters)
SMALL_RUNS = {"smollm2-135m": dict(facts_per_relation=10),
              "gemma3-270m": dict(facts_per_relation=3, relations=("P103", "P136", "P159", "P19", "P20", "P30", "P364", "P937"))}
WIDE_UNIFORM = {"smollm2-135m": 56, "gemma3-270m": 3}  # Table 2's sample: facts per relation, every relation
KNOWN = {"smollm2-135m": (None, 48), "gemma3-270m": (8, 8)}  # known facts per relation: Figures 4-5 and Table 5; Table 6
KNOWN_TABLES, EDIT_TABLES = ("suppress", "erase"), ("update", "ppl_prompts")
NOT_RERUN = ("bingrel", "bingrel_abs")  # from the small run; no option of the definitions changes their rows


def best_design_groups(model: str, say=print) -> dict[str, dict[str, pd.DataFrame]]:
    """The tables behind ``model``'s headline claims, grouped by the sample that serves each (the groups
    ``claims.claims_by_sample`` takes): Table 2 from the widest uniform sample, Figures 4-5 and Table 5
    from known facts, Table 6 from the larger known-facts sample, the rest from the small run."""
    from . import KNOWN_OFFICIAL

    known, edits = KNOWN[model]
    wide = BookSample(model=model, facts_per_relation=WIDE_UNIFORM[model])
    known_sample, edit_sample = known_facts_sample(model, known), known_facts_sample(model, edits)
    per = WIDE_UNIFORM[model]
    labels = {"wide": f"uniform, {per} per relation", "known": f"known facts, up to {known_sample.facts_per_relation} per relation",
              "edit": f"known facts, up to {edit_sample.facts_per_relation} per relation"}
    sources = {labels["wide"]: (wide, ["pairs"]),
               labels["known"]: (official_then_earlier(known_sample, KNOWN_EARLIER), list(KNOWN_TABLES))}
    if labels["edit"] == labels["known"]:
        sources[labels["known"]] = (sources[labels["known"]][0], [*KNOWN_TABLES, *EDIT_TABLES])
    else:
        sources[labels["edit"]] = (official_then_earlier(edit_sample, KNOWN_EARLIER), list(EDIT_TABLES))
    groups = tables_by_sample(sources, say)
    small_label = f"uniform, {SMALL_RUNS[model]['facts_per_relation']} per relation"
    small = load_first(official_then_earlier(BookSample(model=model, params=KNOWN_OFFICIAL, **SMALL_RUNS[model])),
                       NOT_RERUN, small_label, say)
    for group, kept in small.items():
        # a definition-free table reads the same under any definitions: its group does not name them
        name = small_label if set(kept) <= set(DEFINITION_FREE) else group
        groups.setdefault(f"{name} (not rerun)", {}).update(kept)
    return groups


def best_design_claims(model: str, n_boot: int, seed: int = 0, say=print) -> pd.DataFrame:
    """``claims.claims_by_sample`` of ``best_design_groups``."""
    return claims_by_sample(best_design_groups(model, say), n_boot=n_boot, seed=seed)


@dataclass(frozen=True)
class MapClaim:
    where: str  # the paper's table or figure, or the critique's source (a prefix of its ``where``)
    claim: str  # the claim's text in ``claims.paper_claims`` / ``critiques.critique_claims`` (a prefix)
    words: str  # what the map calls it
    n_unit: str  # what n counts (singular)
    control: tuple[str, str] | None = None  # (intervention, measure) of ``controls.control_claims``, if any


MAP_CLAIMS = (
    MapClaim("Table 2", "KNs: same-relation fact pairs share more neurons than different-relation pairs",
             "Facts of one relation share more knowledge neurons than facts of two (Table 2, neurons)", "relation"),
    MapClaim("Figure 4", "suppressing KNs lowers p(answer)", "Suppressing knowledge neurons lowers p(answer) (Figure 4)",
             "relation", ("suppress", "p(answer) change")),
    MapClaim("Figure 5", "amplifying KNs raises p(answer)", "Amplifying knowledge neurons raises p(answer) (Figure 5)",
             "relation", ("amplify", "p(answer) change")),
    MapClaim("Table 4", "KNs are more active on T1 (fact expressed) than on T2",
             "Knowledge neurons fire more on sentences that express the fact than on sentences with its subject and object (Table 4)",
             "relation"),
    MapClaim("Table 6", "editing KNs updates facts: success rate, KNs minus random neurons",
             "Editing knowledge neurons makes the new answer top-1 more often than editing random neurons (Table 6, points)",
             "edited fact", ("update", "success")),
    MapClaim("Table 6", "editing KNs barely changes the perplexity of other facts of the relation",
             "An edit barely changes the perplexity of the relation's other facts (Table 6, ceiling)", "edited fact"),
    MapClaim("Table 5", "erasing a relation's top KNs hurts that relation more than the others",
             "Erasing a relation's knowledge neurons hurts that relation more than the others (Table 5, perplexity change)",
             "erased relation", ("erase", "perplexity change")),
    MapClaim("Table 5", "erasing a relation leaves the other relations' perplexity similar",
             "Erasing a relation leaves the other relations' perplexity similar (Table 5, ceiling)", "erased relation"),
)
CRITIQUE_CLAIMS = (
    MapClaim("Hase et al. 2023", "localization adds at most",
             "Hase et al. 2023: where attribution points adds almost nothing to where an edit works (R², ceiling)", "fact"),
    MapClaim("Niu et al. 2024, Figure 6b", "zeroing agreement neurons changes BLiMP accuracy by at most this many points (12",
             "Niu et al. 2024: zeroing agreement neurons changes grammar accuracy little (points, ceiling)", "paradigm"),
    MapClaim("Niu et al. 2024, Table 1", "after a successful edit the reverse fact holds",
             "Niu et al. 2024: after an edit the reverse fact does not follow (%, ceiling)", "testable edit"),
)
MAP_COLUMNS = ["claim", "model", "ours [95% CI]", "n", "paper", "vs both matched controls", "verdict"]


def _controls_word(controls: pd.DataFrame, model: str, key: tuple[str, str] | None) -> str:
    if key is None:
        return "—"
    rows = controls[(controls["model"] == model) & (controls["intervention"] == key[0]) & (controls["measure"] == key[1])]
    if rows.empty:
        return "not run"
    rows = rows[rows["verdict"] != "no data"]
    if rows.empty:
        return "too few to tell"
    beats = int((rows["verdict"] == "beats its control").sum())
    if beats == len(rows):
        return "beats both" if len(rows) == 2 else f"beats all {len(rows)}"
    return "beats neither" if beats == 0 else f"beats {beats} of {len(rows)}"


def _row(item: MapClaim, model: str, name: str, table: pd.DataFrame, controls: pd.DataFrame) -> dict | None:
    found = table[table["where"].str.startswith(item.where) & table["claim"].str.startswith(item.claim)]
    if found.empty:
        return None
    r = found.sort_values("n_clusters", ascending=False).iloc[0]  # the row with the most data (symmetry: testable edits)
    ours = "—" if pd.isna(r["ci_low"]) else claim_cell(r["ours"], r["ci_low"], r["ci_high"], r["unit"])
    return {"claim": item.words, "model": name, "ours [95% CI]": ours, "n": plural(int(r["n_clusters"]), item.n_unit),
            "paper": paper_cell(r["paper"], r["unit"]), "vs both matched controls": _controls_word(controls, model, item.control),
            "verdict": r["verdict"]}


def verdict_map(claims: dict[str, pd.DataFrame], controls: pd.DataFrame, critiques: pd.DataFrame | None = None,
                model_names: dict[str, str] | None = None, wheres: tuple[str, ...] | None = None) -> pd.DataFrame:
    """One row per ``MAP_CLAIMS`` entry and model of ``claims`` (model -> its claims table, e.g.
    ``best_design_claims``), then per ``CRITIQUE_CLAIMS`` entry and model of ``critiques`` (``critiques.
    critique_claims``): the claim in words, the model, our estimate with its 95% interval and the
    published value in the claim's unit, n with what it counts, the matched controls' reading (``controls.
    control_claims``; "—" where the claim has no intervention to control) and the verdict. ``wheres``
    (e.g. ``("Table 6",)``): only the entries of those tables, figures or critiques (a chapter's rows)."""
    names = model_names or {}

    def chosen(items: tuple[MapClaim, ...]) -> tuple[MapClaim, ...]:
        return items if wheres is None else tuple(i for i in items if i.where in wheres)

    rows = []
    for item in chosen(MAP_CLAIMS):
        for model, table in claims.items():
            rows.append(_row(item, model, names.get(model, model), table, controls))
    if critiques is not None:
        for item in chosen(CRITIQUE_CLAIMS):
            for model, table in critiques.groupby("model", sort=False):
                rows.append(_row(item, model, names.get(model, model), table, controls))
    return pd.DataFrame([r for r in rows if r is not None], columns=MAP_COLUMNS)


def headline_map(n_boot: int, seed: int = 0, say=print, wheres: tuple[str, ...] | None = None) -> pd.DataFrame:
    """The verdict map of every model of ``SMALL_RUNS`` on its best design, with the committed matched
    controls and critiques, as the intro and the claims chapter show it (one function, so the two pages
    cannot disagree); ``wheres``: a chapter's rows only (``verdict_map``), the verdict it opens with."""
    from ..models import short_name
    from . import controls as control_runs
    from . import critiques

    claims = {model: best_design_claims(model, n_boot, seed, say) for model in SMALL_RUNS}
    control_tables, _ = control_runs.stored_control_tables()
    control_claims = control_runs.control_claims(control_tables, n_boot=n_boot, seed=seed)
    critique_claims = None
    if wheres is None or any(i.where in wheres for i in CRITIQUE_CLAIMS):
        critique_tables, _ = critiques.stored_critique_tables()
        critique_claims = critiques.critique_claims(critique_tables, n_boot=n_boot, seed=seed)
    return verdict_map(claims, control_claims, critique_claims, {m: short_name(m) for m in SMALL_RUNS}, wheres)


def map_reading(table: pd.DataFrame) -> str:
    """The map in one sentence: how many rows (a claim on a model) confirm the paper's direction (and how
    many at its size), detect nothing, are reversed or borderline, lack the data, and how the ceiling
    claims fare; a kind no row has is left out."""
    v = table["verdict"]
    confirmed = int((v.str.startswith("confirmed") | (v == "holds")).sum())
    counts = [("direction confirmed", confirmed, f" ({int((v == 'holds').sum())} of them at the paper's size)"),
              ("nothing detected", int((v == "not detected").sum()), ""), ("reversed", int((v == "reversed").sum()), ""),
              ("borderline", int((v == "borderline").sum()), ""), ("too few clusters to decide", int((v == "no data").sum()), ""),
              ("within a published ceiling", int((v == "within ceiling").sum()), ""),
              ("a published ceiling exceeded", int((v == "exceeded").sum()), "")]
    shown = [f"{label}: {n}{extra}" for label, n, extra in counts if n]
    return f"Of {plural(len(table), 'row')} (a claim on a model): " + "; ".join(shown) + "."
