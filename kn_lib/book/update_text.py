"""Table 6 against its matched controls, in words: the sentences the updating chapter generates from
``controls.effects`` and ``controls.control_claims`` (each branch tested in ``tests/test_wording.py``)."""

from __future__ import annotations

import pandas as pd

from . import controls

CONTROL_WORDS = (("random-layer", "random neurons of the same layers"),
                 ("activation-matched", "same-layer neurons that fire as strongly"))


def update_sentence(effects: pd.DataFrame, model: str) -> str:
    """The committed edits of ``model`` through knowledge neurons and their two matched controls: success
    and change, each with its interval (or that the comparison is not committed)."""
    rows = effects[(effects["model"] == model) & (effects["intervention"] == "update")]
    if rows.empty:
        return "the matched-control edits are not committed yet"

    def value(measure: str, name: str) -> str:
        return controls.effect_text(rows, model, "update", measure, name, unit="%")

    n = int(rows.set_index(["measure", "neuron_set"]).loc[("success", "knowledge"), "n"])
    return (f"over the edits of {n} relations (resampled as clusters), an edit through knowledge "
            f"neurons succeeds in {value('success', 'knowledge')}, through same-layer random neurons in "
            f"{value('success', 'random-layer')} and through activation-matched neurons in "
            f"{value('success', 'activation-matched')}; it changes the answer in {value('change', 'knowledge')}, "
            f"{value('change', 'random-layer')} and {value('change', 'activation-matched')}")


def update_reading(claims: pd.DataFrame, model: str) -> str:
    """What the success verdicts against each matched control say, in words the verdicts choose; a control
    the knowledge neurons do not beat is bounded by its interval, not called the same."""
    mine = claims[(claims["model"] == model) & (claims["intervention"] == "update")].set_index(["measure", "control"])
    if mine.empty:
        return "no verdict yet."
    said = []
    for control, what in CONTROL_WORDS:
        if ("success", control) not in mine.index:
            said.append(f"against {what}: not run")
            continue
        row = mine.loc[("success", control)]
        if row.verdict == "beats its control":
            said.append(f"the edit's success beats its control of {what}")
        elif row.verdict == "does not beat its control":
            pool = ("none of them a knowledge neuron of any fact of the sample"
                    if controls.control_definition(model, "update") == controls.NON_KN else
                    "a control that avoids only the edited fact's own knowledge neurons, so some of them are "
                    "other facts' knowledge neurons")
            said.append(f"the edit's success does not beat its control of {what} ({pool}): the difference, "
                        f"{row.estimate:+.1f} points [{row.ci_low:+.1f}, {row.ci_high:+.1f}], bounds the knowledge "
                        f"neurons' advantage at {row.ci_high:.1f} points but does not show the two are the same")
        elif row.verdict == "no data":
            said.append(f"against {what}: too few relations to decide")
        else:
            said.append(f"against {what}: {row.verdict}")
    return "; ".join(said) + "."
