"""The experiments of Dai et al. (2022), sections 4.4-5.2, for any masked or causal LM adapter.

Each takes a ``refined`` table from ``kn_lib.pipeline.find_knowledge_neurons`` (integrated gradients,
the activation baseline, or a ``random_like`` control) and returns a result with a tidy ``table`` (one
row per observation), a ``summary`` dataclass holding the paper's headline numbers and the seed, and a
``skipped`` table naming every input it could not use and why; ``config`` is the settings dataclass
that produced it (every random draw takes its ``seed``).

=====================================  ========================  =======================
module                                 function                  paper
=====================================  ========================  =======================
``neuron_statistics``                  ``neuron_statistics``     Fig. 3, Table 2 (4.4)
``suppress_amplify``                   ``suppress_and_amplify``  Fig. 4, 5 (4.5)
``bingrel_activation``                 ``bingrel_activation``    Tables 3, 4 (4.6)
``update_facts``                       ``update_facts``          Table 6 (5.1)
``erase_relations``                    ``erase_relations``       Table 5 (5.2)
=====================================  ========================  =======================

Shared pieces: ``evaluation`` (prompts, perplexity, skip log), ``interventions`` (activation scaling
and value-slot edits, restored exactly), ``neuron_sets`` (reading refined tables, random controls).

Beyond the paper: ``controls`` (matched controls of a fact's knowledge neurons: a random neuron of the
same layer, or the same-layer neuron closest in mean activation; suppress-amplify, update and erase run
on them too) and ``paraphrase_consistency`` (how far a fact's prompts agree on its neurons).

The field's critiques of knowledge neurons, re-tested with the paper's pipeline and the same controls:

=====================================  ===========================  ==================================
module                                 function                     critique
=====================================  ===========================  ==================================
``edit_localization``                  ``edit_localization``        Hase et al. 2023: does localization
                                                                    inform editing?
``edit_localization_fit``              ``layer_r2``,                their regressions: R^2 of the edit
                                       ``r2_increment_interval``    layer, with localization added
``symmetric_edits``                    ``symmetric_edits``          Niu et al. 2024: symmetry
``grammar_neurons``                    ``grammar_neurons``          Niu et al. 2024: BLiMP agreement
                                                                    (pairs from ``kn_lib.blimp``)
=====================================  ===========================  ==================================
"""

from .bingrel_activation import BingRelConfig, BingRelResult, bingrel_activation, top_bottom_sentences
from .edit_localization import EditLocalizationConfig, EditLocalizationResult, EditLocalizationSummary, edit_localization
from .edit_localization_fit import kn_layer_advantage, layer_r2, r2_increment_interval
from .erase_relations import EraseConfig, EraseResult, erase_relations
from .grammar_neurons import GrammarConfig, GrammarResult, GrammarSummary, grammar_neurons
from .evaluation import perplexity
from .neuron_sets import random_like
from .neuron_statistics import StatisticsConfig, StatisticsResult, neuron_statistics
from .suppress_amplify import ManipulationConfig, ManipulationResult, change_ratio, suppress_and_amplify
from .symmetric_edits import SymmetryConfig, SymmetryResult, SymmetrySummary, symmetric_edits
from .update_facts import UpdateResult, update_facts
from .update_plans import UpdateConfig

__all__ = [
    "BingRelConfig", "BingRelResult", "bingrel_activation", "top_bottom_sentences",
    "EditLocalizationConfig", "EditLocalizationResult", "EditLocalizationSummary", "edit_localization",
    "kn_layer_advantage", "layer_r2", "r2_increment_interval",
    "EraseConfig", "EraseResult", "erase_relations",
    "GrammarConfig", "GrammarResult", "GrammarSummary", "grammar_neurons",
    "perplexity", "random_like",
    "StatisticsConfig", "StatisticsResult", "neuron_statistics",
    "ManipulationConfig", "ManipulationResult", "change_ratio", "suppress_and_amplify",
    "SymmetryConfig", "SymmetryResult", "SymmetrySummary", "symmetric_edits",
    "UpdateConfig", "UpdateResult", "update_facts",
]
