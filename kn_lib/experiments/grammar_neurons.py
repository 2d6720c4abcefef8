r"""Knowledge neurons for grammatical agreement, and what suppressing them does (beyond Dai et al.).

Niu et al. (ICLR 2024, "What does the Knowledge Neuron Thesis have to do with knowledge?") found
"knowledge neurons" for BLiMP's determiner-noun agreement as readily as for facts, and that editing
them shifts probabilities more than it changes which form the model prefers. This re-tests it with the
book's unchanged pipeline and its matched controls.

* Unit: a BLiMP *group* (``kn_lib.blimp``: e.g. ``this+singular``, ``plural-subject``) plays a fact, with
  ``fact_id = "<paradigm>/<group>"`` and ``relation = <paradigm>``; its minimal pairs play the paraphrases.
* Encoding: the good prefix, asked for the good word (causal LM: the prefix's tokens, answer at the last
  position, target the first token of ``" " + word``; masked LM: ``prefix [MASK] .``, single wordpieces
  only). Unusable pairs go to ``skipped`` with the reason.
* Neurons: per group, ``prompts_per_group`` pairs drawn with ``seeded_rng(seed, "grammar/pairs/<group>")``
  are attributed (``pipeline.attribute``), cut to coarse sets (``refine.coarse_neurons``) and refined
  per paradigm over all its groups (``pipeline.refine_coarse``), as a relation's facts are.
* Suppression: on up to ``eval_pairs`` *other* pairs of the group, the group's neurons (or a matched
  control of them, ``controls.matched_neurons``) are zeroed at the answer position (for ``two_prefix``
  pairs on both prefixes) and the pair's score (``pair_scores``) is read before and after.
"""

from __future__ import annotations

import contextlib
from dataclasses import dataclass, field
from typing import Callable, Sequence

import pandas as pd
import torch

from ..adapters import EncodedPrompt, ModelAdapter, MultiTokenObject, UnusablePrompt
from ..blimp import MinimalPair
from ..pipeline import THRESHOLD_COLUMNS, KNConfig, attribute, refine_coarse
from ..refine import Neuron, coarse_neurons
from .controls import CONTROLS, matched_neurons
from .evaluation import SKIP_COLUMNS, SkipLog, seeded_rng
from .interventions import scaled_activations
from .suppress_amplify import change_ratio

NEURON_SETS = ("knowledge", *CONTROLS)
TABLE_COLUMNS = ["paradigm", "group", "fact_id", "pair_id", "form", "neuron_set", "n_neurons", "score_before", "score_after",
                 "correct_before", "correct_after", "flip", "p_target_before", "p_target_after"]
GROUP_COLUMNS = ["paradigm", "group", "fact_id", "n_usable", "n_attribution", "n_eval", "n_kn"]


@dataclass(frozen=True)
class GrammarConfig:
    kn: KNConfig = KNConfig()
    prompts_per_group: int = 20  # pairs attributed per group (its "paraphrases")
    eval_pairs: int = 50  # held-out pairs per group on which neurons are suppressed
    seed: int = 0
    controls: tuple[str, ...] = CONTROLS

    def __post_init__(self) -> None:
        if self.prompts_per_group < 1 or self.eval_pairs < 0:
            raise ValueError(f"need prompts_per_group >= 1 and eval_pairs >= 0, got {self.prompts_per_group}, {self.eval_pairs}")
        unknown = [c for c in self.controls if c not in CONTROLS]
        if unknown:
            raise ValueError(f"unknown control(s) {unknown}; expected some of {', '.join(CONTROLS)}")


@dataclass(frozen=True)
class GrammarSummary:
    """Accuracies and flip rates are fractions (0-1) of held-out pairs of groups with knowledge neurons;
    ``*_p_change`` is ``change_ratio`` of p(good target) in percent, ``*_score_change`` the mean change of s."""

    model: str
    method: str
    n_groups: int  # groups with at least one usable pair (attributed)
    n_groups_with_kn: int
    mean_kn_per_group: float  # refined neurons per attributed group (0 for a group without any)
    accuracy_before: float  # share of held-out pairs with s > 0, unchanged model
    knowledge_accuracy_after: float = float("nan")
    knowledge_flip_rate: float = float("nan")  # among pairs correct before: the share no longer correct
    knowledge_p_change: float = float("nan")
    knowledge_score_change: float = float("nan")
    random_layer_accuracy_after: float = float("nan")
    random_layer_flip_rate: float = float("nan")
    random_layer_p_change: float = float("nan")
    random_layer_score_change: float = float("nan")
    activation_matched_accuracy_after: float = float("nan")
    activation_matched_flip_rate: float = float("nan")
    activation_matched_p_change: float = float("nan")
    activation_matched_score_change: float = float("nan")
    seed: int = 0


@dataclass
class GrammarResult:
    refined: pd.DataFrame  # one row per (group, knowledge neuron), the pipeline's columns
    coarse: pd.DataFrame  # one row per (group, attributed pair, coarse neuron)
    table: pd.DataFrame  # one row per (group, held-out pair, neuron set)
    thresholds: pd.DataFrame  # refine_coarse's row per paradigm
    groups: pd.DataFrame  # per group: usable, attributed and held-out pairs, knowledge neurons
    summary: GrammarSummary
    skipped: pd.DataFrame
    config: GrammarConfig = field(default_factory=GrammarConfig)


@dataclass(frozen=True)
class EncodedPair:
    """A minimal pair ready for the model: ``good`` (good prefix -> good word, the prompt attributed) and
    ``bad`` (``one_prefix``: the same prompt -> the bad word; ``two_prefix``: the bad prefix -> the word)."""

    pair: MinimalPair
    good: EncodedPrompt
    bad: EncodedPrompt


def fact_id_of(pair: MinimalPair) -> str:
    return f"{pair.paradigm}/{pair.group}"


def encode_prompt(adapter: ModelAdapter, prefix: str, word: str) -> EncodedPrompt:
    """``prefix`` asked for ``word``: causal LMs read the token after the prefix and take the first token of
    ``" " + word``; masked LMs fill ``prefix [MASK] .`` and need ``word`` to be one wordpiece."""
    if adapter.family == "causal":
        word_ids = adapter.tokenizer(" " + word, add_special_tokens=False).input_ids
        if not word_ids:
            raise UnusablePrompt(f"no token: {word!r}")
        text = prefix.rstrip()
        ids = adapter.tokenizer(text, return_tensors="pt").input_ids[0]
        prompt = EncodedPrompt(ids, len(ids) - 1, int(word_ids[0]), text)
    elif adapter.family == "masked":
        try:
            prompt = adapter.encode("[X] [Y] .", prefix, word)
        except MultiTokenObject as err:
            raise UnusablePrompt(f"not a single wordpiece: {err}") from None
    else:
        raise ValueError(f"{adapter.name}: family {adapter.family!r} is neither 'causal' nor 'masked'")
    unk = adapter.tokenizer.unk_token_id
    if unk is not None and prompt.target_id == unk:
        raise UnusablePrompt(f"unknown to the tokenizer: {word!r}")
    return prompt


def encode_pair(adapter: ModelAdapter, pair: MinimalPair) -> EncodedPair:
    """Both continuations of a pair; ``UnusablePrompt`` when the model cannot tell them apart."""
    good = encode_prompt(adapter, pair.prefix_good, pair.word_good)
    bad = encode_prompt(adapter, pair.prefix_bad, pair.word_bad)
    if pair.form == "one_prefix" and good.target_id == bad.target_id:
        token = adapter.tokenizer.decode([good.target_id])
        raise UnusablePrompt(f"both words begin with the same token: {pair.word_good!r}, {pair.word_bad!r} ({token!r})")
    return EncodedPair(pair, good, bad)


@torch.no_grad()
def _log_probs(adapter: ModelAdapter, prompt: EncodedPrompt, sets: Sequence[Sequence[Neuron]]) -> torch.Tensor:
    """[1 + len(sets), vocab] log-distributions at the answer position in one batch: row 0 unchanged,
    row k with the k-th set's activations zeroed (one hook per set, scaling only its own row)."""
    rows = 1 + len(sets)
    with contextlib.ExitStack() as stack:
        for k, neurons in enumerate(sets, start=1):
            factors = [0.0 if r == k else 1.0 for r in range(rows)]
            stack.enter_context(scaled_activations(adapter, neurons, prompt.answer_pos, factors))
        ids = prompt.input_ids[None].expand(rows, -1).to(adapter.device)
        return adapter.logits_at(ids, prompt.answer_pos).float().log_softmax(-1).cpu()


def pair_scores(adapter: ModelAdapter, encoded: EncodedPair,
                sets: Sequence[Sequence[Neuron]] = ()) -> tuple[list[float], list[float]]:
    r"""The minimal-pair score s, unchanged and then with each set of neurons zeroed, and p(good target):

        one_prefix:  s = \log p(w_good | prefix) - \log p(w_bad | prefix)
        two_prefix:  s = \log p(w | prefix_good) - \log p(w | prefix_bad)

    The pair is correct when s > 0 (BLiMP's criterion on the words' first tokens)."""
    good = _log_probs(adapter, encoded.good, sets)
    bad = good if encoded.pair.form == "one_prefix" else _log_probs(adapter, encoded.bad, sets)
    target = good[:, encoded.good.target_id]
    return (target - bad[:, encoded.bad.target_id]).tolist(), target.exp().tolist()


def _suppress(adapter: ModelAdapter, fact_id: str, attributed: list[EncodedPair], held: list[EncodedPair],
              kns: list[Neuron], config: GrammarConfig, skips: SkipLog) -> list[dict]:
    """Rows of ``table`` for one group: each held-out pair under its knowledge neurons and their controls."""
    paradigm = attributed[0].pair.paradigm
    if not kns:
        skips.add("no refined knowledge neuron: nothing to suppress", paradigm, fact_id)
        return []
    if not held:
        skips.add("no held-out pair left to evaluate (all usable pairs were attributed)", paradigm, fact_id)
        return []

    def activations() -> torch.Tensor:  # mean answer-position activation over the group's attributed prompts
        return torch.stack([adapter.activations(ep.good).double() for ep in attributed]).mean(0).float()

    sets = {"knowledge": kns}
    for kind in config.controls:
        sets[kind] = matched_neurons(kind, kns, adapter.n_neurons, kns,
                                     lambda kind=kind: seeded_rng(config.seed, f"grammar/{kind}/{fact_id}"), activations)
    rows = []
    for ep in held:
        scores, p = pair_scores(adapter, ep, list(sets.values()))
        for k, (name, neurons) in enumerate(sets.items(), start=1):
            before, after = scores[0] > 0, scores[k] > 0
            rows.append({"paradigm": paradigm, "group": ep.pair.group, "fact_id": fact_id, "pair_id": ep.pair.pair_id,
                         "form": ep.pair.form, "neuron_set": name, "n_neurons": len(neurons), "score_before": scores[0],
                         "score_after": scores[k], "correct_before": before, "correct_after": after,
                         "flip": before and not after, "p_target_before": p[0], "p_target_after": p[k]})
    return rows


def grammar_neurons(adapter: ModelAdapter, pairs: list[MinimalPair], config: GrammarConfig = GrammarConfig(),
                    progress: Callable[[int], object] | None = None) -> GrammarResult:
    """Knowledge neurons of each BLiMP group and the effect of suppressing them (module docstring);
    ``progress(1)`` after each group."""
    skips = SkipLog("grammar_neurons")
    by_paradigm: dict[str, dict[str, list[EncodedPair]]] = {}
    for pair in pairs:
        usable = by_paradigm.setdefault(pair.paradigm, {}).setdefault(fact_id_of(pair), [])
        try:
            usable.append(encode_pair(adapter, pair))
        except UnusablePrompt as err:
            skips.add(str(err), pair.paradigm, fact_id_of(pair), f"pair {pair.pair_id}")
    coarse_rows, refined_rows, threshold_rows, table_rows, group_rows = [], [], [], [], []
    for paradigm, groups in by_paradigm.items():
        coarse_sets: dict[str, list[set[Neuron]]] = {}
        split: dict[str, tuple[list[EncodedPair], list[EncodedPair]]] = {}
        for fact_id, usable in groups.items():
            if not usable:
                skips.add("no usable pair", paradigm, fact_id)
                continue
            order = seeded_rng(config.seed, f"grammar/pairs/{fact_id}").sample(range(len(usable)), len(usable))
            attributed = [usable[i] for i in order[:config.prompts_per_group]]
            split[fact_id] = attributed, [usable[i] for i in order[config.prompts_per_group:][:config.eval_pairs]]
            sets = coarse_sets[fact_id] = []
            for ep, scores in zip(attributed, attribute(adapter, [ep.good for ep in attributed], config.kn)):
                sets.append(coarse_neurons(scores, config.kn.coarse_threshold))
                coarse_rows += [{"fact_id": fact_id, "relation": paradigm, "template_id": ep.pair.pair_id, "layer": layer,
                                 "neuron": neuron, "score": float(scores[layer, neuron])} for layer, neuron in sorted(sets[-1])]
        kns: dict[str, list[Neuron]] = {}
        if coarse_sets:
            refined, threshold = refine_coarse(paradigm, coarse_sets, config.kn)
            refined_rows += refined
            threshold_rows.append(threshold)
            for row in refined:
                kns.setdefault(row["fact_id"], []).append((row["layer"], row["neuron"]))
        for fact_id, usable in groups.items():
            if fact_id in split:
                attributed, held = split[fact_id]
                table_rows += _suppress(adapter, fact_id, attributed, held, kns.get(fact_id, []), config, skips)
                group_rows.append({"paradigm": paradigm, "group": usable[0].pair.group, "fact_id": fact_id,
                                   "n_usable": len(usable), "n_attribution": len(attributed), "n_eval": len(held),
                                   "n_kn": len(kns.get(fact_id, []))})
            if progress is not None:
                progress(1)
    tag = {"model": adapter.name, "method": config.kn.method, "seed": config.seed}
    frames = {
        "refined": _frame(refined_rows, ["fact_id", "relation", "layer", "neuron", "share", "p"], tag),
        "coarse": _frame(coarse_rows, ["fact_id", "relation", "template_id", "layer", "neuron", "score"], tag),
        "table": _frame(table_rows, TABLE_COLUMNS, tag),
        "thresholds": _frame(threshold_rows, THRESHOLD_COLUMNS, config.kn.as_row() | tag),
        "groups": _frame(group_rows, GROUP_COLUMNS, tag),
    }
    summary = _summary(frames["table"], frames["groups"], tag)
    return GrammarResult(**frames, summary=summary, skipped=_frame(skips.rows, SKIP_COLUMNS, tag), config=config)


def _frame(rows: list[dict], columns: list[str], tag: dict) -> pd.DataFrame:
    frame = pd.DataFrame(rows, columns=columns)
    for key, value in tag.items():
        frame[key] = value
    return frame


def _summary(table: pd.DataFrame, groups: pd.DataFrame, tag: dict) -> GrammarSummary:
    """The summary's means over ``table`` (held-out pairs of groups with knowledge neurons)."""
    knowledge = table[table["neuron_set"] == "knowledge"]
    per_set = {}
    for name in NEURON_SETS:
        sel = table[table["neuron_set"] == name]
        if not len(sel):
            continue
        key = name.replace("-", "_")
        eligible = sel[sel["correct_before"].astype(bool)]
        per_set |= {f"{key}_accuracy_after": float(sel["correct_after"].astype(bool).mean()),
                    f"{key}_flip_rate": float(eligible["flip"].astype(bool).mean()) if len(eligible) else float("nan"),
                    f"{key}_p_change": 100 * change_ratio(sel["p_target_before"], sel["p_target_after"]),
                    f"{key}_score_change": float((sel["score_after"] - sel["score_before"]).mean())}
    return GrammarSummary(
        model=tag["model"], method=tag["method"], n_groups=len(groups), n_groups_with_kn=int((groups["n_kn"] > 0).sum()),
        mean_kn_per_group=float(groups["n_kn"].mean()) if len(groups) else float("nan"),
        accuracy_before=float(knowledge["correct_before"].astype(bool).mean()) if len(knowledge) else float("nan"),
        seed=tag["seed"], **per_set)
