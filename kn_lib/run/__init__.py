"""The ``kn`` run machinery: stages over sharded, resumable, checksummed results.

Modules, each importing only those listed before it (``tests/test_import_graph.py`` checks it):

* ``store``: results on disk (Parquet shards, manifest, checksums, atomic writes, shard claims);
* ``result_store``: ``ResultStore``, one results directory read, written and claimed under its lock;
* ``partial``: the finished units of a shard that takes longer than a session (the erase's relations);
* ``registry``: run settings, presets, the ``Stage`` type and the registry that stages register into
  (it imports no stage);
* ``search_stages``: the knowledge-neuron search as two stages, ``attribute`` and ``refine``;
* ``experiment_inputs``: what the experiments read besides their shards (refined neurons, every fact, bags);
* ``experiment_definitions``: the paper's experiments (``Experiment``: options, config, how each runs);
* ``experiment_stages``: the paper's experiments as stages (``statistics``, ``suppress-amplify``, ...);
* ``coverage_stages``: ``coverage``, single-token coverage of every fact (the background chapter);
* ``critique_stages``: the field's critiques (``edit-localization``, ``symmetry``, ``grammar``);
* ``faithfulness_stage``: ``faithfulness``, attribution methods against exact ablation;
* ``null_stages``: ``nonsense`` and ``redundancy``, the field's nulls against knowledge neurons;
* ``held_out_stage``: ``held-out``, suppress/amplify of neurons chosen on half of each fact's prompts;
* ``held_out_update_stage``: ``held-out-update``, Table 6's edit through those neurons, read on both halves;
* ``results``: reading a stage's table back by preset and options (``results.load``, for the book);
* ``backends``: where shards are computed (this process or Ray actors) and how each records it;
* ``runner``: runs a stage's shards locally or on Ray, resuming finished ones;
* ``cli``: the ``kn`` command.

This package's ``__init__`` is the one entry that imports the stage definitions, so importing anything
from ``kn_lib.run`` finds every stage in ``registry.stage_registry()``. The science (``data``,
``models``, ``attribution``, ``refine``, ``pipeline``, ``experiments``) never imports ``kn_lib.run``.
"""

from . import search_stages  # noqa: F401  (registers attribute, refine)
from . import experiment_stages  # noqa: F401  (registers the experiments, after refine)
from . import coverage_stages  # noqa: F401  (registers coverage)
from . import critique_stages  # noqa: F401  (registers edit-localization, symmetry, grammar)
from . import faithfulness_stage  # noqa: F401  (registers faithfulness)
from . import null_stages  # noqa: F401  (registers nonsense, redundancy)
from . import held_out_stage  # noqa: F401  (registers held-out)
from . import held_out_update_stage  # noqa: F401  (registers held-out-update)
