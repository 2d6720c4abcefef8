"""What changes if…: each option the paper's text or our own reading leaves open, against the headline
design, for the claims of the main model. One function per option returns the two claims tables (the
headline's and the option's); ``what_changes`` compares them with ``claims.compare_designs`` and writes
one row per option; ``changed_claims`` lists the claims whose verdict an option moves.

The chapters report the official definitions on their best design only; this is where a reader finds
how much each choice matters.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable

import pandas as pd

from ..run.results import ResultsNotFound
from . import KNOWN_OFFICIAL, BookSample, known_facts_sample
from .claim_tables import matched_tables, official_then_earlier, relations_with_kns
from .claims import PAPER_METRIC, claims_by_sample, compare_designs
from .table_style import number_text
from .verdict_map import SMALL_RUNS, best_design_groups


@dataclass(frozen=True)
class Headline:
    """The headline design of one model, loaded and judged once for every option (``comparisons``)."""
    model: str
    n_boot: int
    seed: int
    groups: dict[str, dict[str, pd.DataFrame]]  # ``verdict_map.best_design_groups``
    claims: pd.DataFrame  # ``claims_by_sample`` of them

    @property
    def suppress(self) -> pd.DataFrame:
        """Figures 4-5's table of the headline design."""
        return next(t["suppress"] for t in self.groups.values() if "suppress" in t)


@dataclass(frozen=True)
class Option:
    name: str  # what a reader would change
    flag: str  # how to run it
    claims: Callable[[Headline], tuple[pd.DataFrame, pd.DataFrame]]  # -> (the claims it is compared with, the option's)


def _quiet(_: str) -> None:
    pass


def _share_rule(h: Headline) -> tuple[pd.DataFrame, pd.DataFrame]:
    """Both refinement rules on the small uniform run, each table under the same definitions for both."""
    designs = matched_tables({rule: official_then_earlier(BookSample(model=h.model, share_rule=rule, params=KNOWN_OFFICIAL,
                                                                     **SMALL_RUNS[h.model]))
                              for rule in ("official", "paper")}, say=_quiet)
    out = [claims_by_sample(designs[rule], n_boot=h.n_boot, seed=h.seed) for rule in ("official", "paper")]
    return out[0], out[1]


def _uniform(h: Headline) -> tuple[pd.DataFrame, pd.DataFrame]:
    from .claim_tables import stored_tables

    small = stored_tables(official_then_earlier(BookSample(model=h.model, params=KNOWN_OFFICIAL, **SMALL_RUNS[h.model])),
                          "uniform", _quiet)
    return h.claims, claims_by_sample(small, n_boot=h.n_boot, seed=h.seed)


def _without_empty_relations(h: Headline) -> tuple[pd.DataFrame, pd.DataFrame]:
    return h.claims, claims_by_sample({"with KNs": {"suppress": relations_with_kns(h.suppress)}}, n_boot=h.n_boot, seed=h.seed)


def _held_out(h: Headline) -> tuple[pd.DataFrame, pd.DataFrame]:
    from .held_out import HELD_OUT_RUNS, as_figure45, stored_held_out

    tables, _ = stored_held_out({h.model: HELD_OUT_RUNS.get(h.model)})
    if h.model not in tables:
        return h.claims, h.claims.iloc[:0]
    held = claims_by_sample({"held-out": {"suppress": as_figure45(tables[h.model], "held-out")}}, n_boot=h.n_boot, seed=h.seed)
    return h.claims, held[held["ours"].notna()]


def _sign_aware(h: Headline) -> tuple[pd.DataFrame, pd.DataFrame]:
    """Table 6 with the paper's edit and with the sign-aware one, on the one run that has both (the small
    uniform sample under the earlier readings): only the edit differs."""
    from . import EARLIER_DEFINITIONS
    from .claim_tables import load_table

    small = BookSample(model=h.model, params=EARLIER_DEFINITIONS, **SMALL_RUNS[h.model])
    try:
        edits = {name: load_table(small, name) for name in ("update", "update_signed")}
    except ResultsNotFound:
        return h.claims, h.claims.iloc[:0]
    out = [claims_by_sample({"the run": {"update": edits[name]}}, n_boot=h.n_boot, seed=h.seed) for name in edits]
    return out[0], out[1]


def _earlier(h: Headline) -> tuple[pd.DataFrame, pd.DataFrame]:
    from . import KNOWN_EARLIER
    from .verdict_map import KNOWN

    known = known_facts_sample(h.model, KNOWN[h.model][0])
    designs = {"official": {"official": known}, "earlier": {"official": known_facts_sample(h.model, KNOWN[h.model][0], KNOWN_EARLIER)}}
    tables = {d: matched_tables({d: c}, names=("suppress", "erase"), say=_quiet)[d] for d, c in designs.items()}
    out = [claims_by_sample(tables[d], n_boot=h.n_boot, seed=h.seed) for d in ("official", "earlier")]
    return out[0], out[1]


OPTIONS = (
    Option("the paper text's refinement rule (more than p% of prompts) instead of the official scripts'",
           "kn ... --share-rule paper", _share_rule),
    Option("facts drawn uniformly (mostly unknown to the model) instead of facts it knows", "kn run --preset paper", _uniform),
    Option("the earlier readings of the definitions instead of the official scripts' (known facts)",
           "kn ... with the earlier stage options", _earlier),
    Option("Figures 4-5 without the relations that have no knowledge neuron", "(a reading of the same run)",
           _without_empty_relations),
    Option("knowledge neurons chosen on half of each fact's prompts, measured on the other half", "kn held-out", _held_out),
    Option("a sign-aware edit with λ2 = 2 (ours, for gated FFNs) instead of the paper's edit (uniform sample, earlier readings)",
           "kn update --sign-aware yes --lambda2 2", _sign_aware),
)
WHAT_COLUMNS = ["option", "claims compared", "verdicts changed", "largest move"]
CHANGED_COLUMNS = ["option", "claim", "headline", "with the option"]


def _cell(ours: float, low: float, high: float, verdict: str) -> str:
    if pd.isna(ours):
        return str(verdict) if isinstance(verdict, str) else "not tested"
    return f"{number_text(ours)} [{number_text(low)}, {number_text(high)}]: {verdict}"


def comparisons(model: str, n_boot: int, seed: int = 0, options=OPTIONS) -> dict[str, pd.DataFrame]:
    """Option name -> ``compare_designs`` of the headline's and the option's claims (the paper's metrics
    only), for ``model``; the headline design is loaded and judged once (``Headline``)."""
    groups = best_design_groups(model, _quiet)
    h = Headline(model, n_boot, seed, groups, claims_by_sample(groups, n_boot=n_boot, seed=seed))
    out = {}
    for option in options:
        headline, variant = option.claims(h)
        compared = compare_designs(headline[headline["kind"] == PAPER_METRIC], variant[variant["kind"] == PAPER_METRIC])
        out[option.name] = compared[compared["both_data"]].reset_index(drop=True)
    return out


def what_changes(compared: dict[str, pd.DataFrame]) -> pd.DataFrame:
    """One row per option: how many claims both designs decide, how many verdicts change, and the claim
    whose estimate moves most (relative to the headline's), from its headline value to the option's."""
    rows = []
    for name, c in compared.items():
        if c.empty:
            rows.append({"option": name, "claims compared": 0, "verdicts changed": 0, "largest move": "—"})
            continue
        move = ((c["ours_after"] - c["ours_before"]).abs() / c["ours_before"].abs().where(c["ours_before"] != 0)).fillna(0)
        top = c.loc[move.idxmax()]
        before, after = number_text(top["ours_before"]), number_text(top["ours_after"])
        largest = ("no estimate moves" if move.max() < 1e-9 else
                   "no estimate moves beyond rounding" if before == after else f"{top['claim']}: {before} → {after}")
        rows.append({"option": name, "claims compared": len(c), "verdicts changed": int(c["verdict_changed"].sum()),
                     "largest move": largest})
    return pd.DataFrame(rows, columns=WHAT_COLUMNS)


def changed_claims(compared: dict[str, pd.DataFrame]) -> pd.DataFrame:
    """Every claim whose verdict an option changes: the option, the claim, and both sides' estimate,
    interval and verdict."""
    rows = [{"option": name, "claim": r.claim, "headline": _cell(r.ours_before, r.ci_low_before, r.ci_high_before, r.verdict_before),
             "with the option": _cell(r.ours_after, r.ci_low_after, r.ci_high_after, r.verdict_after)}
            for name, c in compared.items() for r in c[c["verdict_changed"]].itertuples()]
    return pd.DataFrame(rows, columns=CHANGED_COLUMNS)


def option_flags(options=OPTIONS) -> pd.DataFrame:
    """Each option and how to run it."""
    return pd.DataFrame({"option": [o.name for o in options], "run": [o.flag for o in options]})
