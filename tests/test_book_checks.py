"""The course kit: every check of ``kn_lib.book.checks`` passes the library's function and fails a
planted common mistake (with its hint) and a stub; every exercise carries its labels; the student
edition (``kn_lib.book.student``) keeps the tasks, strips the solutions, and grades: the instructor
edition to full marks, the untouched student edition to zero, a pasted solution to a pass. The last
is also run through real ``nbgrader`` (skipped where it is not installed: ``make student`` installs it)."""

from __future__ import annotations

import shutil
import subprocess
import sys
from pathlib import Path
from types import SimpleNamespace

import pytest
import torch

from kn_lib.book import checks, student

pytestmark = pytest.mark.usefixtures("one_thread")
ROOT = Path(__file__).resolve().parents[1]
METHOD_CHAPTERS = ("attribution", "statistics", "manipulation", "bingrel", "updating", "erasing", "critiques", "faithfulness", "claims")


# -- the library's own functions, in the students' signatures ---------------------------------------------

def library_ig(p_of, w_bar, steps):
    from kn_lib.attribution import quadrature

    alphas, weights = quadrature(steps, "right")
    total = torch.zeros_like(w_bar)
    for alpha, weight in zip(alphas.tolist(), weights.tolist()):
        w = (alpha * w_bar).detach().requires_grad_(True)
        total += weight * torch.autograd.grad(p_of(w), w)[0]
    return w_bar * total


def library_refine(coarse_sets, p):
    from kn_lib.refine import refine_fact

    return refine_fact(coarse_sets, p, "official")


def library_change_ratio(before, after):
    from kn_lib.experiments import change_ratio

    return change_ratio(before, after)


def library_table4(table):
    from kn_lib.experiments.bingrel_activation import mean_activation

    return mean_activation(table, ["type"])


def library_update(slot, old, new, lambda1=1.0, lambda2=8.0):
    """``updated_value_slots`` on a one-neuron stand-in for a model (a value slot and two embeddings)."""
    from kn_lib.experiments.interventions import updated_value_slots

    projection = torch.nn.Linear(1, len(slot), bias=False).double()
    embeddings = torch.nn.Embedding(2, len(slot)).double()
    with torch.no_grad():
        projection.weight[:, 0] = slot
        embeddings.weight[:] = torch.stack([old, new])
    adapter = SimpleNamespace(model=SimpleNamespace(get_input_embeddings=lambda: embeddings), projections=[projection])
    return updated_value_slots(adapter, [(0, 0)], 0, 1, lambda1, lambda2)[(0, 0)]


def library_top(bags, k):
    from kn_lib.experiments.neuron_sets import most_frequent

    return most_frequent(bags, k, "first")


def library_verdict(paper, low, high):
    from kn_lib.book.claims import Interval, verdict

    return verdict(paper, Interval((low + high) / 2, low, high, 30, 1000, 0.95, 0))


def library_fit(table):
    from kn_lib.experiments.edit_localization_fit import layer_r2

    fit = layer_r2(table)
    return fit["r2_layer"], fit["r2_layer_localization"]


# -- planted common mistakes ---------------------------------------------------------------------------------

def left_riemann_ig(p_of, w_bar, steps):  # off-by-one Riemann index: k = 0..m-1
    total = torch.zeros_like(w_bar)
    for k in range(steps):
        w = (k / steps * w_bar).detach().requires_grad_(True)
        total += torch.autograd.grad(p_of(w), w)[0]
    return w_bar * total / steps


def strict_refine(coarse_sets, p):  # ">" for ">="
    from collections import Counter

    counts = Counter(n for s in coarse_sets for n in s)
    return {n for n, c in counts.items() if c > max(len(coarse_sets) * p, 3)}


def mean_of_ratios(before, after):
    return sum((a - b) / b for b, a in zip(before, after)) / len(before)


def flat_table4(table):
    return table.groupby("type")["activation"].mean()


def wrong_sign_update(slot, old, new, lambda1=1.0, lambda2=8.0):
    norm = slot.norm()
    return slot + lambda1 * norm / old.norm() * old - lambda2 * norm / new.norm() * new


def index_tie_top(bags, k):
    from kn_lib.experiments.neuron_sets import most_frequent

    return most_frequent(bags, k, "index")


def touching_verdict(paper, low, high):  # ">=" for ">": an interval ending at 0 taken to exclude it
    sign = 1 if paper > 0 else -1
    low, high = sorted((sign * low, sign * high))
    e = abs(paper)
    if high <= 0:
        return "reversed"
    if low < 0:
        return "not detected"
    if 0.5 * e <= low and high <= 1.5 * e:
        return "holds"
    return "confirmed, larger" if low > e else ("confirmed, smaller" if high < e else "confirmed, size undetermined")


def linear_layer_fit(table):  # the layer as one number, not one effect per layer
    import numpy as np

    y = table["success"].astype(float).to_numpy()
    base = np.column_stack([np.ones(len(y)), table["layer"].to_numpy(float)])

    def r2(design):
        coef, *_ = np.linalg.lstsq(design, y, rcond=None)
        res = y - design @ coef
        return 1 - float(res @ res) / float(((y - y.mean()) ** 2).sum())

    return r2(base), r2(np.column_stack([base, table["mass_share"].to_numpy(float)]))


def library_grad_x_act(p_of, w_bar):
    """Gradient x activation as the library computes it: one right-sum node of ``quadrature``."""
    from kn_lib.attribution import quadrature

    (alpha,), (weight,) = (t.tolist() for t in quadrature(1, "right"))
    w = (alpha * w_bar).detach().requires_grad_(True)
    return w_bar * weight * torch.autograd.grad(p_of(w), w)[0]


def gradient_alone(p_of, w_bar):
    w = w_bar.detach().clone().requires_grad_(True)
    return torch.autograd.grad(p_of(w), w)[0]


CASES = [
    (checks.integrated_gradients_layer, library_ig, left_riemann_ig, "alpha = k/m for k = 1..m"),
    (checks.refined_neurons, library_refine, strict_refine, "equality"),
    (checks.change_ratio, library_change_ratio, mean_of_ratios, "per-prompt ratios"),
    (checks.table4_activation, library_table4, flat_table4, "flat mean"),
    (checks.value_slot_update, library_update, wrong_sign_update, "check the signs"),
    (checks.top_neurons, library_top, index_tie_top, "ties"),
    (checks.effect_verdict, library_verdict, touching_verdict, "does not exclude no effect"),
    (checks.layer_localization_r2, library_fit, linear_layer_fit, "the layer is a category"),
    (checks.gradient_times_activation, library_grad_x_act, gradient_alone, "multiplies it by the neuron's own activation"),
]
IDS = [c[0].__name__ for c in CASES]


def stub(*args, **kwargs):
    raise NotImplementedError()


@pytest.mark.parametrize("check, library, mistake, hint", CASES, ids=IDS)
def test_check_passes_the_library_function(check, library, mistake, hint, capsys):
    check(library)
    assert "✓" in capsys.readouterr().out


@pytest.mark.parametrize("check, library, mistake, hint", CASES, ids=IDS)
def test_check_names_a_planted_mistake(check, library, mistake, hint):
    with pytest.raises(checks.CheckFailed, match="expected") as failed:
        check(mistake)
    assert hint in str(failed.value) and "case" in str(failed.value)


@pytest.mark.parametrize("check, library, mistake, hint", CASES, ids=IDS)
def test_check_fails_a_stub(check, library, mistake, hint):
    with pytest.raises(checks.CheckFailed, match="stub"):
        check(stub)


def test_a_crash_is_a_failed_case_with_the_expected_value():
    with pytest.raises(checks.CheckFailed, match="(?s)raised ZeroDivisionError.*expected"):
        checks.change_ratio(lambda before, after: 1 / 0)


def test_every_check_is_listed():
    assert set(checks.CHECKS) == set(IDS)


# -- labels and implement exercises in the chapters ------------------------------------------------------------

def test_every_exercise_states_its_labels():
    chapters = student.chapters_with_exercises()
    assert {p.stem for p in chapters} >= {*METHOD_CHAPTERS, "intro", "background", "performance", "limitations"}
    for chapter in chapters:
        found = student.exercises(chapter.read_text())
        assert found, chapter.name
        for label, body in found:
            assert student.exercise_labels(body) is not None, f"{chapter.name}: {label} lacks its labels line"


def test_labels_are_parsed():
    body = ":label: x\n\n**Difficulty** ★★☆ · **Importance** ★☆☆ · **15 min**\n\nDo it."
    assert student.exercise_labels(body) == student.Labels(2, 1, 15)
    assert student.exercise_labels(":label: x\n\nDo it.") is None


def _implement_exercises(notebook) -> dict[str, tuple[str, str]]:
    """label -> (implement cell source, check cell source) of a source notebook."""
    cells = {c.metadata["nbgrader"]["grade_id"]: c.source for c in notebook.cells if "nbgrader" in c.metadata}
    labels = [g[: -len("-check")] for g in cells if g.endswith("-check")]
    return {label: (cells[f"{label}-implement"], cells[f"{label}-check"]) for label in labels}


@pytest.fixture(scope="module")
def editions():
    """chapter -> (instructor notebook, student notebook) of every method chapter."""
    out = {}
    for name in METHOD_CHAPTERS:
        source = student.instructor_notebook(ROOT / "book" / f"{name}.md")
        out[name] = (source, student.clear_solutions(source))
    return out


def _run_check(implement: str, check: str) -> None:
    namespace: dict = {}
    exec(compile(implement, "<implement>", "exec"), namespace)
    exec(compile(check, "<check>", "exec"), namespace)


@pytest.mark.parametrize("chapter", METHOD_CHAPTERS)
def test_chapter_has_an_implement_exercise_that_grades(chapter, editions, capsys):
    """Instructor edition: every check passes; student edition: every check fails on the stub; the
    instructor's solution pasted into the student's cell: passes again."""
    source, released = editions[chapter]
    ours, theirs = _implement_exercises(source), _implement_exercises(released)
    assert ours and set(ours) == set(theirs), chapter
    for label, (implement, check) in ours.items():
        assert student.BEGIN in implement and check == theirs[label][1]
        _run_check(implement, check)
        stubbed = theirs[label][0]
        assert "raise NotImplementedError()" in stubbed and student.BEGIN not in stubbed
        with pytest.raises(checks.CheckFailed, match="stub"):
            _run_check(stubbed, check)
        pasted = "\n".join(line for line in implement.splitlines() if "### " not in line)
        _run_check(pasted, check)
    assert capsys.readouterr().out.count("✓") == 2 * len(ours)


@pytest.mark.parametrize("chapter", METHOD_CHAPTERS)
def test_student_edition_keeps_tasks_and_drops_solutions(chapter, editions):
    source, released = editions[chapter]
    assert len(source.cells) == len(released.cells)
    for ours, theirs in zip(source.cells, released.cells):
        meta = ours.metadata.get("nbgrader", {})
        if meta.get("solution"):
            assert student.BEGIN in ours.source and student.BEGIN not in theirs.source
        else:
            assert ours.source == theirs.source
        if meta.get("grade") and not meta.get("solution"):
            assert meta["locked"] and meta["points"] == student.CHECK_POINTS
    tasks = [c for c in released.cells if c.metadata.get("nbgrader", {}).get("grade_id", "").endswith("-task")]
    assert tasks and all(c.source.startswith("### Exercise") and "**Difficulty**" in c.source for c in tasks)


@pytest.mark.parametrize("chapter", METHOD_CHAPTERS)
def test_the_book_shows_each_implement_exercise_the_stub_its_student_gets(chapter, editions):
    """The starter block above a chapter's hidden solution is the student edition's cell, character for
    character, and the instructor edition leaves the book's copy out."""
    text = (ROOT / "book" / f"{chapter}.md").read_text(encoding="utf-8")
    source, released = editions[chapter]
    stubs = [c.source for c in released.cells if c.metadata.get("nbgrader", {}).get("grade_id", "").endswith("-implement")]
    assert stubs and text.count(student.STARTER_LEAD) == len(stubs)
    for stub in stubs:
        assert f"{student.STARTER_LEAD}\n\n```python\n{stub.strip()}\n```" in text
    assert not any(student.STARTER_LEAD in c.source for c in source.cells)


def test_starter_code_keeps_signature_and_docstring():
    code = student.starter_code('import math\n\n\ndef f(x):\n    """Why."""\n    return math.sqrt(x)\n')
    assert code == 'import math\n\n\ndef f(x):\n    """Why."""\n    # YOUR CODE HERE\n    raise NotImplementedError()\n'


def test_function_bodies_are_wrapped_after_the_docstring():
    wrapped = student.wrap_function_bodies('import math\n\n\ndef f(x):\n    """Why."""\n    y = x\n    return y\n')
    assert wrapped.splitlines() == ["import math", "", "", "def f(x):", '    """Why."""', f"    {student.BEGIN}",
                                    "    y = x", "    return y", f"    {student.END}"]


def test_course_directory(tmp_path):
    written = student.write_course(tmp_path, [ROOT / "book" / "statistics.md"])
    assert written == [tmp_path / "source" / "statistics" / "statistics.ipynb"]
    assert "Execute.timeout" in (tmp_path / "nbgrader_config.py").read_text()


# -- real nbgrader on a one-page chapter ---------------------------------------------------------------------------

MINI = '''---
jupytext:
  text_representation: {extension: .md, format_name: myst, format_version: 0.13}
kernelspec: {display_name: Python 3, language: python, name: python3}
---

# A one-exercise chapter

## Exercises

```{exercise}
:label: mini-ex-verdict

**Difficulty** ★★☆ · **Importance** ★★★ · **20 min**

Write `my_verdict(paper, low, high)`.
```

```{solution-start} mini-ex-verdict
:class: dropdown
```

```{code-cell} ipython3
:tags: [implement]

def my_verdict(paper: float, low: float, high: float) -> str:
    """The verdict of an effect claim."""
    sign = 1 if paper > 0 else -1
    low, high = sorted((sign * low, sign * high))
    e = abs(paper)
    if high < 0:
        return "reversed"
    if low <= 0:
        return "not detected"
    if 0.5 * e <= low and high <= 1.5 * e:
        return "holds"
    return "confirmed, larger" if low > e else ("confirmed, smaller" if high < e else "confirmed, size undetermined")
```

The direction first, then the size.

```{solution-end}
```

```{code-cell} ipython3
:tags: [check]

from kn_lib.book import checks

checks.effect_verdict(my_verdict)
```
'''


def test_nbgrader_generates_and_autogrades(tmp_path):
    pytest.importorskip("nbgrader", reason="nbgrader is installed by `make student` (the course extra)")
    import nbformat
    from nbgrader.api import Gradebook

    chapter = tmp_path / "mini.md"
    chapter.write_text(MINI)
    course = tmp_path / "course"
    student.write_course(course, [chapter])
    student.release(course, ["mini"])
    released = course / "release" / "mini" / "mini.ipynb"
    pasted = nbformat.read(released, 4)
    solution = nbformat.read(course / "source" / "mini" / "mini.ipynb", 4)
    for cell, answer in zip(pasted.cells, solution.cells):
        if cell.metadata.get("nbgrader", {}).get("grade_id") == "mini-ex-verdict-implement":
            cell.source = "\n".join(line for line in answer.source.splitlines() if "### " not in line)
    for who, notebook in (("instructor", nbformat.read(course / "source" / "mini" / "mini.ipynb", 4)),
                          ("student", nbformat.read(released, 4)), ("pasted", pasted)):
        (course / "submitted" / who / "mini").mkdir(parents=True)
        nbformat.write(notebook, course / "submitted" / who / "mini" / "mini.ipynb")
    nbgrader = shutil.which("nbgrader", path=str(Path(sys.executable).parent))
    env = {"PATH": f"{Path(sys.executable).parent}:/usr/bin:/bin"}
    subprocess.run([nbgrader, "autograde", "mini", "--log-level=ERROR"], cwd=course, check=True, env=env,
                   capture_output=True)
    with Gradebook(f"sqlite:///{course / 'gradebook.db'}") as gradebook:
        scores = {who: gradebook.find_submission("mini", who).score for who in ("instructor", "student", "pasted")}
        top = gradebook.find_submission("mini", "instructor").max_score
    assert top == student.CHECK_POINTS
    assert scores == {"instructor": top, "student": 0.0, "pasted": top}
