"""kn_lib: knowledge neurons (Dai et al., ACL 2022) in any masked or causal language model.

Layers, each importing only the ones above it:
data (``data``, ``sources``) -> models (``model_files``, ``adapters``, ``models``, ``model_registry``)
-> attribution (``attribution``) -> refinement (``refine``, ``pipeline``) -> experiments. Beside
them, importing the layers and never imported by them: ``run`` (the ``kn`` command, its stages and
results store) and what only the book uses (``book``: ``BookSample``, ``book.claims``, ``book.plots``; the paper's own numbers
in ``book.paper``). ``tests/test_import_graph.py`` checks the direction.
"""

__version__ = "0.1.0"
