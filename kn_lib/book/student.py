"""The student edition: nbgrader notebooks written from the book's own MyST chapters (``make student``).

One source serves the book and the course. A chapter's exercises are ``{exercise}`` directives, each
with its solution between ``{solution-start}`` and ``{solution-end}``; an *implement* exercise's
solution holds a code cell tagged ``implement`` (the function the student writes) and is followed by a
cell tagged ``check`` that calls ``kn_lib.book.checks``. This module turns each chapter into an nbgrader
*source* notebook (the instructor edition):

* every solution code cell becomes an nbgrader solution cell: an ``implement`` cell's function bodies
  (after their docstrings) and any other solution cell's whole code lie between ``### BEGIN SOLUTION``
  and ``### END SOLUTION``, so the student gets the signature and ``raise NotImplementedError()``;
* a solution's prose becomes a manually graded answer worth 0 points (the student gets "YOUR ANSWER
  HERE"; an instructor who grades reading exercises raises the points);
* each ``check`` cell becomes a read-only autograder test cell worth 1 point (a failing check raises
  ``CheckFailed``, an ``AssertionError``), each exercise statement a read-only cell.

``nbgrader generate_assignment`` then writes the student edition from it; ``clear_solutions`` does the
same stripping without nbgrader (tests, and a look at the release without installing it). Run as
``python -m kn_lib.book.student --out _build/student [--release]``; only jupytext and nbformat are
imported (not torch), and only when a notebook is built.
"""

from __future__ import annotations

import argparse
import ast
import os
import re
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
BEGIN, END = "### BEGIN SOLUTION", "### END SOLUTION"
CODE_STUB, TEXT_STUB = "# YOUR CODE HERE\nraise NotImplementedError()", "YOUR ANSWER HERE"
CHECK_POINTS = 1  # each implement exercise's check
# the labels every exercise states first (book/intro.md explains the scale)
LABEL_LINE = re.compile(r"^\*\*Difficulty\*\* (★{1,3}☆{0,2}) · \*\*Importance\*\* (★{1,3}☆{0,2}) · \*\*(\d+) min\*\*$")
_DIRECTIVE = re.compile(r"```\{(exercise|solution-start|solution-end)\}([^\n]*)\n(.*?)```", re.S)
NBGRADER_CONFIG = '''"""nbgrader settings of the kn-book course (written by `make student`)."""
c = get_config()  # noqa: F821
# A chapter loads committed tables and sometimes a model: a cell can take minutes, not nbgrader's 30 s.
c.Execute.timeout = 1200
'''


@dataclass(frozen=True)
class Labels:
    """An exercise's difficulty and importance (1-3) and expected minutes."""

    difficulty: int
    importance: int
    minutes: int


def exercise_labels(body: str) -> Labels | None:
    """The labels on the first line of an exercise's text (after its options), or None."""
    lines = [line for line in body.strip().splitlines() if not line.startswith(":")]
    text = next((line.strip() for line in lines if line.strip()), "")
    found = LABEL_LINE.match(text)
    if not found:
        return None
    return Labels(found[1].count("★"), found[2].count("★"), int(found[3]))


def exercises(markdown: str) -> list[tuple[str, str]]:
    """(label, body) of every ``{exercise}`` directive of a chapter's MyST text."""
    out = []
    for kind, _, body in _DIRECTIVE.findall(markdown):
        if kind == "exercise":
            label = re.search(r"^:label:\s*(\S+)", body, re.M)
            out.append((label[1] if label else "", body))
    return out


def _segments(text: str) -> list[tuple[str, str, str]]:
    """A markdown cell cut at exercise and solution directives: (kind, argument, body); kind "text" for
    the markdown between them."""
    out, at = [], 0
    for found in _DIRECTIVE.finditer(text):
        if text[at:found.start()].strip():
            out.append(("text", "", text[at:found.start()].strip()))
        out.append((found[1], found[2].strip(), found[3]))
        at = found.end()
    if text[at:].strip():
        out.append(("text", "", text[at:].strip()))
    return out


def wrap_function_bodies(source: str) -> str:
    """Each top-level function's body (after its docstring) between the solution delimiters."""
    lines = source.splitlines()
    functions = [n for n in ast.parse(source).body if isinstance(n, (ast.FunctionDef, ast.AsyncFunctionDef))]
    if not functions:
        raise ValueError("an implement cell must define a function")
    for fn in reversed(functions):
        body = fn.body[1:] if ast.get_docstring(fn) is not None and len(fn.body) > 1 else fn.body
        indent = " " * body[0].col_offset
        lines.insert(fn.end_lineno, indent + END)
        lines.insert(body[0].lineno - 1, indent + BEGIN)
    return "\n".join(lines)


def starter_code(source: str) -> str:
    """An implement cell as the student edition hands it out: every function's signature and docstring,
    its body the stub (what ``clear_solutions`` makes of ``wrap_function_bodies``); the book shows it in the
    exercise, above the hidden solution."""
    return stubbed(wrap_function_bodies(source), CODE_STUB).strip() + "\n"


def stubbed(source: str, stub: str) -> str:
    """``source`` with each region between the solution delimiters replaced by ``stub``, at its indent."""
    kept, inside = [], False
    for line in source.splitlines():
        if BEGIN in line:
            inside = True
            indent = line[: len(line) - len(line.lstrip())]
            kept += [indent + s for s in stub.splitlines()]
        elif END in line:
            inside = False
        elif not inside:
            kept.append(line)
    return "\n".join(kept)


STARTER_LEAD = "**Start from** (the student edition's cell; the solution below fills it in):"


def starter_block(source: str) -> str:
    """The markdown a chapter shows between an implement exercise and its solution: ``STARTER_LEAD`` and
    ``starter_code`` in a Python block (``tests/test_lab.py`` checks that each matches its cell)."""
    return f"{STARTER_LEAD}\n\n```python\n{starter_code(source)}```"


def _nbgrader(grade_id: str, *, grade: bool = False, solution: bool = False, locked: bool = False,
              points: float | None = None) -> dict:
    meta = {"grade": grade, "solution": solution, "locked": locked, "grade_id": grade_id, "schema_version": 3}
    if grade:
        meta["points"] = points
    return meta


def _exercise_markdown(label: str, body: str) -> str:
    """An exercise directive as plain markdown (a notebook does not render MyST directives)."""
    text = "\n".join(line for line in body.strip().splitlines() if not line.startswith(":")).strip()
    return f"### Exercise `{label}`\n\n{text}"


def instructor_notebook(chapter: Path):
    """The nbgrader source notebook of one MyST chapter (module docstring)."""
    import jupytext
    import nbformat

    book = jupytext.read(chapter)
    cells, solution, seen = [], None, {}
    last_exercise = None

    def grade_id(stem: str) -> str:  # "<label>-check"; a second cell of the same kind gets "-2"
        seen[stem] = seen.get(stem, 0) + 1
        return stem if seen[stem] == 1 else f"{stem}-{seen[stem]}"

    for cell in book.cells:
        tags = cell.metadata.get("tags", [])
        if cell.cell_type == "markdown":
            for kind, argument, body in _segments(cell.source):
                if kind == "exercise":
                    last_exercise = re.search(r"^:label:\s*(\S+)", body, re.M)[1]
                    new = nbformat.v4.new_markdown_cell(_exercise_markdown(last_exercise, body))
                    new.metadata["nbgrader"] = _nbgrader(grade_id(f"{last_exercise}-task"), locked=True)
                elif kind == "solution-start":
                    solution = argument
                    continue
                elif kind == "solution-end":
                    solution = None
                    continue
                elif solution is not None:
                    new = nbformat.v4.new_markdown_cell(f"{BEGIN}\n\n{body}\n\n{END}")
                    new.metadata["nbgrader"] = _nbgrader(grade_id(f"{solution}-answer"), grade=True, solution=True, points=0)
                elif body.startswith(STARTER_LEAD):  # the book's copy of the stub the implement cell becomes
                    continue
                else:
                    new = nbformat.v4.new_markdown_cell(body)
                cells.append(new)
            continue
        new = nbformat.v4.new_code_cell(cell.source, metadata={k: v for k, v in cell.metadata.items() if k == "tags"})
        if solution is not None:
            wrapped = wrap_function_bodies(cell.source) if "implement" in tags else f"{BEGIN}\n{cell.source}\n{END}"
            new.source = wrapped
            new.metadata["nbgrader"] = _nbgrader(grade_id(f"{solution}-{'implement' if 'implement' in tags else 'solution'}"),
                                                 solution=True)
        elif "check" in tags:
            if last_exercise is None:
                raise ValueError(f"{chapter.name}: a check cell before any exercise")
            new.metadata["nbgrader"] = _nbgrader(grade_id(f"{last_exercise}-check"), grade=True, locked=True,
                                                 points=CHECK_POINTS)
        cells.append(new)
    notebook = nbformat.v4.new_notebook(cells=cells, metadata={"kernelspec": dict(book.metadata.get("kernelspec", {})),
                                                               "language_info": {"name": "python"}})
    return notebook


def clear_solutions(notebook):
    """The student edition of a source notebook, as ``nbgrader generate_assignment`` makes it: solution
    regions (or whole solution cells) become the stubs, outputs are cleared."""
    import copy

    out = copy.deepcopy(notebook)
    for cell in out.cells:
        if cell.cell_type == "code":
            cell.outputs, cell.execution_count = [], None
        meta = cell.metadata.get("nbgrader", {})
        if not meta.get("solution"):
            continue
        stub = CODE_STUB if cell.cell_type == "code" else TEXT_STUB
        cell.source = stubbed(cell.source, stub) if BEGIN in cell.source else stub
    return out


def chapters_with_exercises(root: Path = ROOT) -> list[Path]:
    """The book's chapters (in ``_toc.yml`` order) that hold exercises."""
    toc = re.findall(r"^\s*(?:root|- file):\s*(\S+)", (root / "_toc.yml").read_text(), re.M)
    paths = [root / f"{name}.md" for name in toc]
    return [p for p in paths if p.is_file() and "```{exercise}" in p.read_text()]


def write_course(out: Path, chapters: list[Path] | None = None) -> list[Path]:
    """An nbgrader course directory: ``source/<chapter>/<chapter>.ipynb`` for each chapter (one
    assignment per chapter) and ``nbgrader_config.py``. Returns the notebooks written."""
    import nbformat

    out.mkdir(parents=True, exist_ok=True)
    (out / "nbgrader_config.py").write_text(NBGRADER_CONFIG)
    written = []
    for chapter in chapters or chapters_with_exercises():
        target = out / "source" / chapter.stem / f"{chapter.stem}.ipynb"
        target.parent.mkdir(parents=True, exist_ok=True)
        nbformat.write(instructor_notebook(chapter), target)
        written.append(target)
    return written


def release(out: Path, assignments: list[str]) -> None:
    """``nbgrader generate_assignment`` of each assignment, in the course directory ``out``."""
    bin_dir = Path(sys.executable).parent  # nbgrader runs ``alembic`` from the PATH: the environment's own
    env = {**os.environ, "PATH": f"{bin_dir}{os.pathsep}{os.environ.get('PATH', '')}"}
    for name in assignments:
        subprocess.run([str(bin_dir / "nbgrader"), "generate_assignment", name, "--force", "--log-level=WARN"],
                       cwd=out, check=True, env=env)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description="Write the book's student edition (an nbgrader course directory).")
    parser.add_argument("--out", type=Path, default=ROOT / "_build" / "student")
    parser.add_argument("--release", action="store_true", help="also run nbgrader generate_assignment (release/)")
    parser.add_argument("chapters", nargs="*", type=Path, help="MyST chapters (default: every chapter with exercises)")
    args = parser.parse_args(argv)
    written = write_course(args.out, [p.resolve() for p in args.chapters] or None)
    print(f"make student: {len(written)} instructor notebooks under {args.out / 'source'}")
    if args.release:
        release(args.out, [p.parent.name for p in written])
        print(f"make student: the student edition under {args.out / 'release'}")


if __name__ == "__main__":
    main()
