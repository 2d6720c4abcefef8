"""One committed edit, redone: the book's live slices check stored Table 6 rows against the model.

A stored edit (``update_facts``' table: fact, template, old and new answer, the neurons edited) holds
everything the edit needs, so it can be replayed on its prompt without redrawing the run's sampling,
which depends on every fact of the population (``sampling="official"``). The edit is undone on leaving.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Iterable

from ..adapters import ModelAdapter
from ..refine import Neuron
from .evaluation import answer_distribution
from .interventions import edited_value_slots, updated_value_slots


@dataclass(frozen=True)
class ReplayedEdit:
    top1_after: str  # the edited prompt's top-1 answer, decoded
    changed: bool  # no longer the old answer
    success: bool  # now the new answer


def replay_edit(adapter: ModelAdapter, template: str, subject: str, old_object: str, new_object: str,
                neurons: Iterable[Neuron], lambda1: float = 1.0, lambda2: float = 8.0) -> ReplayedEdit:
    """The paper's value-slot edit (``interventions.updated_value_slots``) of ``neurons`` from
    ``old_object`` to ``new_object``, read on the prompt ``template`` makes of ``subject``, then undone
    (``edited_value_slots`` restores the weights bit for bit)."""
    prompt = adapter.encode(template, subject, old_object)
    new_id = adapter.answer_token(new_object, template)
    slots = updated_value_slots(adapter, [tuple(int(i) for i in n) for n in neurons], prompt.target_id, new_id, lambda1, lambda2)
    with edited_value_slots(adapter, slots):
        top1 = int(answer_distribution(adapter, prompt).argmax())
    return ReplayedEdit(adapter.tokenizer.decode([top1]), top1 != prompt.target_id, top1 == new_id)
