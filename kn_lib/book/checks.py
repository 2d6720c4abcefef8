"""Checks for the book's implement-and-check exercises: ``checks.NAME(student_function)``.

Each check runs the student's function on a few small seeded cases (tiny random models built from
configs, or small hand-made tables: seconds on a CPU, no download) against ``kn_lib``'s own function.
It prints a pass, or raises ``CheckFailed`` naming the *first* failing case, what was expected there,
what came back, and a hint. Why a hint and not the answer: where the student's output matches a
known mistake (the official scripts' Riemann index, ``>`` for ``>=``, the sign of an update...) the
hint names the mistake's place in the method, so the student fixes the idea rather than a number.
``CheckFailed`` is an ``AssertionError``, so an nbgrader test cell that calls a check scores 0 when
the check fails.

The cases themselves are built in ``kn_lib.book.check_cases``; this module holds what a check expects
of them: the reference, the known mistakes and the hints.
"""

from __future__ import annotations

import contextlib
import copy
import math
from dataclasses import dataclass
from typing import Any, Callable, Iterator, Sequence

import pandas as pd
import torch

from .check_cases import (
    Case, Neuron, _activation_table, _bag_cases, _fit_cases, _ig_cases, _ratio_cases, _refine_cases, _update_cases, _verdict_cases,
)


class CheckFailed(AssertionError):
    """A check's first failing case, with what was expected and a hint."""


@dataclass(frozen=True)
class Mistake:
    """A known wrong variant of the reference: when the student's output matches it, ``hint`` is shown."""

    variant: Callable[..., Any]
    hint: str


def _run(check: str, student: Callable, cases: Sequence[Case], reference: Callable, same: Callable[[Any, Any], bool],
         mistakes: Sequence[Mistake], hint: str, show: Callable[[Any], str] = repr) -> None:
    """Call ``student`` on every case; raise ``CheckFailed`` at the first whose output is not ``same``
    as the reference's, with the hint of the first known mistake the output matches (else ``hint``).
    Returns None on a pass: an nbgrader test cell whose last value were a number would be read as a score."""
    for i, case in enumerate(cases, 1):
        expected = reference(*case.args, **case.kwargs)
        where = f"{check}: case {i} of {len(cases)} ({case.name})"
        try:
            got = student(*copy.deepcopy(case.args), **case.kwargs)
        except NotImplementedError:
            raise CheckFailed(f"✗ {where}: the function is still the stub (it raises NotImplementedError); "
                              "write its body.") from None
        except Exception as error:  # noqa: BLE001 - any error of the student's code is a failed case
            raise CheckFailed(f"✗ {where}: your function raised {type(error).__name__}: {error}\n"
                              f"  expected: {show(expected)}\n  hint: {hint}") from None
        if _safe_same(same, expected, got):
            continue
        matched = next((m.hint for m in mistakes if _safe_same(same, m.variant(*case.args, **case.kwargs), got)), hint)
        raise CheckFailed(f"✗ {where}\n  expected: {show(expected)}\n  got:      {show(got)}\n  hint: {matched}")
    print(f"✓ {check}: all {len(cases)} cases agree with kn_lib's own function.")


def _safe_same(same: Callable[[Any, Any], bool], expected: Any, got: Any) -> bool:
    try:
        return bool(same(expected, got))
    except Exception:  # noqa: BLE001 - an output of the wrong type or shape is simply not the same
        return False


def _close(rtol: float = 1e-6) -> Callable[[Any, Any], bool]:
    """Same numbers (tensors, sequences or scalars) up to ``rtol`` of the expected's largest magnitude."""

    def same(expected: Any, got: Any) -> bool:
        e = torch.as_tensor(expected, dtype=torch.float64)
        g = torch.as_tensor(got.detach() if isinstance(got, torch.Tensor) else got, dtype=torch.float64)
        scale = float(e.abs().max()) if e.numel() else 0.0
        return e.shape == g.shape and bool(((e - g).abs() <= rtol * scale + 1e-300).all())

    return same


def _short(t: Any, n: int = 4) -> str:
    """A tensor as its first few values and its sum (enough to compare, not enough to copy)."""
    if not isinstance(t, torch.Tensor):
        return repr(t)
    flat = t.detach().double().flatten()
    head = ", ".join(f"{v:.4g}" for v in flat[:n].tolist())
    return f"tensor of shape {tuple(t.shape)} [{head}{', ...' if len(flat) > n else ''}] (sum {flat.sum().item():.6g})"


@contextlib.contextmanager
def _one_thread() -> Iterator[None]:
    """Tiny matrices: one torch thread is fastest (and polite on a shared machine)."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        yield
    finally:
        torch.set_num_threads(before)


# -- attribution: Eq. (5), the right Riemann sum of one layer --------------------------------------------

def _riemann(p_of, w_bar: torch.Tensor, steps: int, ks: range, width: float, times_w: bool = True) -> torch.Tensor:
    total = torch.zeros_like(w_bar)
    for k in ks:
        w = (k / steps * w_bar).detach().requires_grad_(True)
        (grad,) = torch.autograd.grad(p_of(w), w)
        total += grad
    return (w_bar if times_w else 1.0) * total * width


def integrated_gradients_layer(student: Callable[[Callable, torch.Tensor, int], torch.Tensor]) -> None:
    """``student(p_of, w_bar, steps)`` -> attributions [n_neurons] of one layer (paper, Eq. 5), where
    ``p_of(w)`` is p(answer) with the layer's activation set to w and ``w_bar`` the observed activation;
    checked against ``attribution.integrated_gradients(..., IGConfig(steps=m, method="reference"))``."""
    from ..attribution import IGConfig, integrated_gradients

    def reference(p_of, w_bar, steps, _at):
        adapter, prompt, layer = _at
        return integrated_gradients(adapter, prompt, [layer], IGConfig(steps=steps, method="reference"))[0].double()

    def without_at(fn):
        return lambda p_of, w_bar, steps, _at=None: fn(p_of, w_bar, steps)

    mistakes = [
        Mistake(lambda p, w, m, _at: _riemann(p, w, m, range(0, m), 1 / m),
                "your sum evaluates the gradient at alpha = 0, 1/m, ..., (m-1)/m (the official scripts' left end "
                "points); the paper's Riemann sum is at alpha = k/m for k = 1..m."),
        Mistake(lambda p, w, m, _at: _riemann(p, w, m, range(1, m + 1), 1 / m, times_w=False),
                "integrated gradients multiplies the averaged gradient by the neuron's own activation \\bar w_i."),
        Mistake(lambda p, w, m, _at: _riemann(p, w, m, range(1, m + 1), 1.0),
                "the sum approximates an integral over alpha in [0, 1]: each of the m terms has width 1/m."),
    ]
    hint = ("completeness: the attributions of the layer should sum to about p(\\bar w) - p(0); evaluate the gradient "
            "of p_of at alpha \\bar w for each alpha of the sum, and take the gradient w.r.t. the scaled activation.")
    with _one_thread():
        _run("integrated_gradients_layer", without_at(student), _ig_cases(), reference, _close(1e-6), mistakes,
                    hint, _short)


# -- statistics: the official refinement rule -------------------------------------------------------------

def refined_neurons(student: Callable[[list[set[Neuron]], float], set[Neuron]]) -> None:
    """``student(coarse_sets, p)`` -> the fact's refined neurons under the official rule (keep a neuron
    in c of the n prompts' coarse sets when c >= max(p n, 3)); against ``refine.refine_fact``."""
    from collections import Counter

    from ..refine import refine_fact

    def by_rule(keep):
        def variant(sets, p):
            counts = Counter(x for s in sets for x in s)
            return {x for x, c in counts.items() if keep(c, len(sets), p)}
        return variant

    mistakes = [
        Mistake(by_rule(lambda c, n, p: c > max(n * p, 3)),
                "a neuron found in exactly max(p n, 3) prompts: look at how your comparison treats equality."),
        Mistake(by_rule(lambda c, n, p: c >= n * p),
                "the official rule never keeps a neuron found in fewer than 3 of the fact's prompts, whatever p n is."),
        Mistake(by_rule(lambda c, n, p: c > n * p),
                "two things: the official rule's minimum number of prompts, and how it treats equality."),
    ]
    hint = "count in how many of the n prompts' coarse sets each neuron appears, and compare with the rule's threshold."
    _run("refined_neurons", lambda sets, p: set(map(tuple, student(sets, p))), _refine_cases(),
                lambda sets, p: refine_fact(sets, p, "official"), lambda e, g: e == g, mistakes, hint,
                lambda s: repr(sorted(s)))


# -- manipulation: the change ratio of Figures 4 and 5 ------------------------------------------------------

def change_ratio(student: Callable[[list[float], list[float]], float]) -> None:
    """``student(before, after)`` -> the relative change of p(answer) over a set of prompts (a ratio of
    means, the official quantity); against ``experiments.change_ratio``."""
    from ..experiments.suppress_amplify import change_ratio as reference

    def mean(xs):
        return sum(xs) / len(xs)

    mistakes = [
        Mistake(lambda b, a: mean([(y - x) / x for x, y in zip(b, a)]),
                "you average the per-prompt ratios: one prompt with p near 0 then dominates. The official quantity "
                "compares the mean probabilities."),
        Mistake(lambda b, a: -reference(b, a), "check the sign: a drop of p(answer) is a negative change."),
        Mistake(lambda b, a: 100 * reference(b, a), "return a fraction (-0.5), not a percentage (-50)."),
        Mistake(lambda b, a: mean(a) / mean(b), "a change is (after - before) relative to before: 0 when nothing moves."),
    ]
    _run("change_ratio", student, _ratio_cases(), reference, _close(1e-9), mistakes,
                "the ratio compares the mean probability after with the mean before, relative to the mean before.")


# -- bingrel: Table 4's average activation ----------------------------------------------------------------

def table4_activation(student: Callable[[pd.DataFrame], Any]) -> None:
    """``student(table)`` -> {type: mean activation} (Table 4: per fact and neuron over sentences, then
    over a relation's (fact, neuron) pairs, then over relations); against ``mean_activation(table, ["type"])``."""
    from ..experiments.bingrel_activation import mean_activation

    def as_dict(values: Any) -> dict[str, float]:
        if isinstance(values, pd.DataFrame):
            values = values.set_index("type")["activation"]
        return {str(k): float(v) for k, v in dict(values).items()}

    def reference(table):
        return as_dict(mean_activation(table, ["type"]))

    def same(expected, got):
        expected, got = as_dict(expected), as_dict(got)
        return set(got) == set(expected) and all(math.isclose(got[k], v, rel_tol=1e-9, abs_tol=1e-12) for k, v in expected.items())

    mistakes = [
        Mistake(lambda t: t.groupby("type")["activation"].mean(),
                "a flat mean over rows weighs a fact by its number of sentences and neurons; the paper averages "
                "in stages (sentences, then a relation's neurons, then relations)."),
        Mistake(lambda t: t.groupby(["fact_id", "type", "layer", "neuron"])["activation"].mean().groupby("type").mean(),
                "your mean gives a relation with many facts more weight: Table 4 averages per relation first."),
        Mistake(lambda t: t.groupby(["relation", "type"])["activation"].mean().groupby("type").mean(),
                "within a relation, first average each (fact, neuron) over its sentences, so that a fact with many "
                "sentences counts once."),
    ]
    cases = [Case(f"seeded table {s}: {len(t)} rows, {t['relation'].nunique()} relations, {t['fact_id'].nunique()} facts", (t,))
             for s in range(3) for t in [_activation_table(s)]]
    _run("table4_activation", student, cases, reference, same, mistakes,
                "three means in turn: over a (fact, neuron)'s sentences, over a relation's (fact, neuron) pairs, "
                "over relations.", lambda d: repr({k: round(v, 4) for k, v in as_dict(d).items()}))


# -- updating: the value-slot update of section 5.1 ----------------------------------------------------------

def value_slot_update(student: Callable[..., torch.Tensor]) -> None:
    """``student(slot, old, new, lambda1, lambda2)`` -> the updated value slot, with each embedding first
    rescaled to the slot's norm (as the official script does); against ``interventions.updated_value_slots``."""
    from ..experiments.interventions import updated_value_slots

    def reference(slot, old, new, lambda1, lambda2, _at):
        adapter, neuron, old_id, new_id = _at
        return updated_value_slots(adapter, [neuron], old_id, new_id, lambda1, lambda2)[neuron]

    def variant(sign: float, rescale: bool, unit: bool = False):
        def fn(v, t, t2, lambda1, lambda2, _at=None):
            a = (v.norm() if not unit else 1.0) / t.norm() if rescale else 1.0
            b = (v.norm() if not unit else 1.0) / t2.norm() if rescale else 1.0
            return v + sign * (-lambda1 * a * t + lambda2 * b * t2)
        return fn

    mistakes = [
        Mistake(variant(-1.0, True), "check the signs: the update removes the old answer's embedding and adds the new one's."),
        Mistake(variant(1.0, False), "rescale each embedding to the norm of the value slot it edits before weighting it."),
        Mistake(variant(1.0, True, unit=True), "rescale each embedding to the value slot's norm, not to unit length."),
    ]
    call = lambda slot, old, new, lambda1, lambda2, _at=None: student(slot, old, new, lambda1=lambda1, lambda2=lambda2)  # noqa: E731
    with _one_thread():
        _run("value_slot_update", call, _update_cases(), reference, _close(1e-9), mistakes,
                    "v <- v - lambda1 t + lambda2 t', each embedding rescaled to ||v|| first.", _short)


# -- erasing: a relation's most frequent knowledge neurons ----------------------------------------------------

def top_neurons(student: Callable[[list[list[Neuron]], int], list[tuple[Neuron, int]]]) -> None:
    """``student(bags, k)`` -> the k neurons found in the most facts of a relation, with their counts,
    ties to the neuron seen first (the official ``Counter.most_common``); against ``neuron_sets.most_frequent``."""
    from collections import Counter

    from ..experiments.neuron_sets import most_frequent

    def normal(pairs):
        return [(tuple(int(x) for x in n), int(c)) for n, c in pairs]

    def counted_twice(bags, k):
        return Counter(n for bag in bags for n in bag).most_common(k)

    mistakes = [
        Mistake(lambda bags, k: most_frequent(bags, k, "index"),
                "ties: the official script keeps the neuron it saw first (walking the facts in order), not the "
                "lower (layer, index)."),
        Mistake(counted_twice, "a fact counts once for a neuron, however often its bag lists it."),
    ]
    _run("top_neurons", lambda bags, k: normal(student(bags, k)), _bag_cases(), lambda b, k: normal(most_frequent(b, k)),
                lambda e, g: e == g, mistakes, "count, for each neuron, the facts whose bag holds it; keep the k largest counts.")


# -- claims: the verdict of an effect claim --------------------------------------------------------------------

def effect_verdict(student: Callable[[float, float, float], str]) -> None:
    """``student(paper, low, high)`` -> "holds", "confirmed, smaller", "confirmed, larger", "confirmed, size
    undetermined", "not detected" or "reversed" for an effect claim against no effect = 0 (margin 0.5, no
    Monte Carlo error); against ``claims.verdict``."""
    from .claims import Interval, verdict

    def reference(paper, low, high):
        return verdict(paper, Interval((low + high) / 2, low, high, n_clusters=30, n_boot=1000, level=0.95, seed=0))

    def unsigned(paper, low, high):  # forgets to turn the axis for a negative claim
        return reference(abs(paper), low, high)

    def touching(paper, low, high):  # ">=" for ">": an interval that ends at 0 is taken to exclude it
        sign = 1.0 if paper > 0 else -1.0
        a, b = sorted((sign * low, sign * high))
        if a == 0:  # an interval that starts at 0, read as if it excluded it
            return reference(abs(paper), 1e-9, b)
        return reference(paper, low, high)

    def containment(paper, low, high):  # the old rule: "holds" whenever the interval contains the paper's value
        found = reference(paper, low, high)
        sign = 1.0 if paper > 0 else -1.0
        a, b = sorted((sign * low, sign * high))
        return "holds" if found == "confirmed, size undetermined" and a <= abs(paper) <= b else found

    mistakes = [
        Mistake(unsigned, "the paper's effect can be negative (suppression lowers p): read the interval in the "
                          "paper's direction, so that 'smaller' means closer to no effect."),
        Mistake(touching, "an interval that reaches 0 (or ends exactly at it) does not exclude no effect."),
        Mistake(containment, "an interval that contains the paper's value but is wider than the margin is no evidence "
                             "of the same size: 'holds' needs the whole interval within half the paper's effect of it."),
    ]
    _run("effect_verdict", student, _verdict_cases(), reference, lambda e, g: e == g, mistakes,
                "first the direction (does the interval exclude 0 on the paper's side?), then the size (does it lie "
                "within the paper's effect x (1 ± 0.5)? else wholly short of it, wholly beyond it, or neither?).")


# -- critiques: how much the edit layer and the localization explain ------------------------------------------

def layer_localization_r2(student: Callable[[pd.DataFrame], tuple[float, float]]) -> None:
    """``student(table)`` -> (R^2 of success on layer fixed effects, R^2 with ``mass_share`` added), over a
    table with columns fact_id, layer, mass_share, success; against ``edit_localization_fit.layer_r2``."""
    import numpy as np

    from ..experiments.edit_localization_fit import layer_r2

    def reference(table):
        fit = layer_r2(table)
        return fit["r2_layer"], fit["r2_layer_localization"]

    def r2(y, design):
        coef, *_ = np.linalg.lstsq(design, y, rcond=None)
        res = y - design @ coef
        return 1 - float(res @ res) / float(((y - y.mean()) ** 2).sum())

    def linear_layer(table):  # the layer as one number, not one effect per layer
        y = table["success"].astype(float).to_numpy()
        base = np.column_stack([np.ones(len(y)), table["layer"].to_numpy(float)])
        return r2(y, base), r2(y, np.column_stack([base, table["mass_share"].to_numpy(float)]))

    def localization_alone(table):  # the second fit without the layers
        y = table["success"].astype(float).to_numpy()
        return reference(table)[0], r2(y, np.column_stack([np.ones(len(y)), table["mass_share"].to_numpy(float)]))

    mistakes = [
        Mistake(linear_layer, "the layer is a category: give each layer its own effect (one-hot columns), not one "
                              "slope over the layer's number."),
        Mistake(localization_alone, "the second model keeps the layer effects and adds the localization: the "
                                    "question is what localization explains beyond the layer."),
    ]
    _run("layer_localization_r2", student, _fit_cases(), reference, _close(1e-6), mistakes,
         "fit y = a + b_layer (+ c * mass_share) by least squares; R^2 = 1 - SS_res / SS_tot.")


# -- which neurons matter: gradient x activation --------------------------------------------------------------

def gradient_times_activation(student: Callable[[Callable, torch.Tensor], torch.Tensor]) -> None:
    """``student(p_of, w_bar)`` -> a_i * dP/dw_i at w = w_bar [n_neurons] for one layer, where ``p_of(w)`` is
    p(answer) with the layer's activation set to w; checked against
    ``experiments.attribution_methods.grad_x_activation`` (integrated gradients with one right-sum step)."""
    from ..experiments.attribution_methods import grad_x_activation

    def reference(p_of, w_bar, _at):
        adapter, prompt, layer = _at
        return grad_x_activation(adapter, prompt)[layer].double()

    mistakes = [
        Mistake(lambda p, w, _at: _riemann(p, w, 1, range(1, 2), 1.0, times_w=False),
                "that is the gradient alone: gradient x activation multiplies it by the neuron's own activation."),
        Mistake(lambda p, w, _at: _riemann(p, w, 1, range(0, 1), 1.0),
                "your gradient is taken at w = 0 (alpha = 0), the official left sum's first node; take it at the observed activation."),
    ]
    hint = "take the gradient of p_of at w_bar itself (one backward pass) and multiply it elementwise by w_bar."
    cases = [Case(c.name.rsplit(", m =", 1)[0], c.args[:2], c.kwargs) for c in _ig_cases()]
    with _one_thread():
        _run("gradient_times_activation", lambda p, w, _at=None: student(p, w), cases, reference, _close(1e-6), mistakes, hint, _short)


CHECKS = {f.__name__: f for f in (integrated_gradients_layer, refined_neurons, change_ratio, table4_activation,
                                  value_slot_update, top_neurons, effect_verdict,
                                  layer_localization_r2, gradient_times_activation)}
