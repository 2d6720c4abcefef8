"""kn_lib: knowledge neurons (Dai et al., ACL 2022) in any masked or causal language model.

Layers, each importing only the ones above it:
data (``data``, ``sources``) -> models (``model_files``, ``adapters``, ``models``) -> attribution
(``attribution``) -> refinement (``refine``, ``pipeline``) -> experiments -> plots. The paper's own
numbers live in ``paper``.
"""

__version__ = "0.1.0"
