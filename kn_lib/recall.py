"""What a model recalls: every usable prompt of a set of facts asked once, without gradients.

Knowledge neurons are only meaningful for facts the model knows: suppressing neurons that carry a
fact cannot lower p(answer) much if the model never gave the answer, and an edit cannot "update" a fact
the model did not hold. The paper's BERT answers a sizable share of LAMA facts; a small causal model
answers few. This screen asks every prompt of every fact (the paper's 27,738 facts over 34 relations)
once and keeps, per prompt, p(answer), the answer's rank and the model's top-1 token; per fact, how many
of its prompts are answered correctly. The experiments that need a known fact draw from it.

Prompts of equal length (and answer position) share a batch, so no padding is needed and every number
is what the model gives for that prompt alone (up to the float rounding of batched products).
"""

from __future__ import annotations

from collections import defaultdict
from typing import Callable, Iterable, Mapping

import pandas as pd
import torch

from .adapters import EncodedPrompt, ModelAdapter
from .data import Relation, as_facts, as_relations
from .pipeline import encode_fact

PROMPT_COLUMNS = {"fact_id": "str", "relation": "str", "template_id": "int64", "p_answer": "float64", "rank": "int64",
                  "correct": "bool", "predicted": "str"}
FACT_COLUMNS = {"fact_id": "str", "relation": "str", "single_token": "bool", "n_prompts": "int64", "n_correct": "int64",
                "any_correct": "bool", "most_correct": "bool", "p_answer_mean": "float64"}


@torch.no_grad()
def answer_ranks(adapter: ModelAdapter, prompts: list[EncodedPrompt]) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """p(answer), the answer's rank (1 = the model's top-1 token) and the top-1 token id of each prompt;
    the prompts must share length and answer position (one batch, no padding)."""
    ids = torch.stack([p.input_ids for p in prompts]).to(adapter.device)
    targets = torch.tensor([p.target_id for p in prompts], device=adapter.device)
    logits = adapter.logits_at(ids, prompts[0].answer_pos).float()  # [batch, vocab]
    target_logit = logits.gather(1, targets[:, None])
    probs = logits.softmax(-1).gather(1, targets[:, None])[:, 0]
    rank = (logits > target_logit).sum(1) + 1  # 1 + the tokens scored strictly higher
    return probs.cpu(), rank.cpu(), logits.argmax(-1).cpu()


def screen_facts(
    adapter: ModelAdapter,
    facts: Iterable[Mapping],
    relations: Mapping[str, Relation],
    batch_size: int = 64,
    on_fact: Callable[[int], object] | None = None,
) -> dict[str, pd.DataFrame]:
    """Ask every usable prompt of ``facts`` once. Returns ``prompts`` (one row per usable prompt) and
    ``facts`` (one row per fact, also those whose answer is not a single token: ``single_token`` False,
    no prompts). A fact is *known* in the loose sense when ``any_correct`` (some prompt's top-1 is the
    answer) and in the strict sense when ``most_correct`` (more than half of its usable prompts)."""
    if batch_size < 1:
        raise ValueError(f"screen_facts: batch_size must be >= 1, got {batch_size}")
    facts, relations = as_facts(facts), as_relations(relations)
    groups: dict[tuple[int, int], list[tuple[dict, int, EncodedPrompt]]] = defaultdict(list)
    single, n_usable = {}, {}
    for fact in facts:
        if fact["relation"] not in relations:
            raise ValueError(f"fact {fact['fact_id']}: relation {fact['relation']} not in the given relations")
        usable, skipped = encode_fact(adapter, fact, relations[fact["relation"]].templates)
        single[fact["fact_id"]] = not any(s["template_id"] is None for s in skipped)
        n_usable[fact["fact_id"]] = len(usable)
        for t, prompt in usable:
            groups[(len(prompt.input_ids), prompt.answer_pos)].append((fact, t, prompt))
    rows = []
    done: dict[str, int] = defaultdict(int)
    reported = set()
    for group in groups.values():
        for start in range(0, len(group), batch_size):
            part = group[start : start + batch_size]
            probs, ranks, top1 = answer_ranks(adapter, [p for _, _, p in part])
            words = adapter.tokenizer.batch_decode(top1[:, None])
            for (fact, t, prompt), p, r, w, top in zip(part, probs.tolist(), ranks.tolist(), words, top1.tolist()):
                # correct: the top-1 token is the answer, as ``pipeline.predict`` decides it (argmax)
                rows.append({"fact_id": fact["fact_id"], "relation": fact["relation"], "template_id": t, "p_answer": p,
                             "rank": r, "correct": top == prompt.target_id, "predicted": w})
                if on_fact is not None:
                    done[fact["fact_id"]] += 1
                    if done[fact["fact_id"]] == n_usable[fact["fact_id"]]:
                        reported.add(fact["fact_id"])
                        on_fact(1)
    if on_fact is not None and len(facts) > len(reported):
        on_fact(len(facts) - len(reported))  # facts without a usable prompt
    prompts = pd.DataFrame(rows, columns=list(PROMPT_COLUMNS)).astype(PROMPT_COLUMNS)
    position = {f["fact_id"]: i for i, f in enumerate(facts)}  # the order the facts were given in
    prompts = prompts.assign(_i=prompts["fact_id"].map(position)).sort_values(["_i", "template_id"], ignore_index=True).drop(columns="_i")
    return {"prompts": prompts, "facts": fact_table(prompts, facts, single)}


def fact_table(prompts: pd.DataFrame, facts: list[Mapping], single: Mapping[str, bool]) -> pd.DataFrame:
    """Per fact: usable prompts, how many are answered correctly (top-1), any / most, mean p(answer)."""
    by_fact = prompts.groupby("fact_id").agg(n_prompts=("correct", "size"), n_correct=("correct", "sum"),
                                             p_answer_mean=("p_answer", "mean"))
    rows = []
    for fact in facts:
        f = fact["fact_id"]
        n, c, p = (by_fact.loc[f].tolist() if f in by_fact.index else (0, 0, float("nan")))
        rows.append({"fact_id": f, "relation": fact["relation"], "single_token": bool(single.get(f, False)),
                     "n_prompts": int(n), "n_correct": int(c), "any_correct": c > 0, "most_correct": n > 0 and c > n / 2,
                     "p_answer_mean": p})
    return pd.DataFrame(rows, columns=list(FACT_COLUMNS)).astype(FACT_COLUMNS)


def recall_by_relation(facts: pd.DataFrame, prompts: pd.DataFrame) -> pd.DataFrame:
    """Per relation: facts, single-token facts, prompts asked, prompt accuracy (top-1), and the share of
    single-token facts known (any / most of their prompts correct)."""
    usable = facts[facts["single_token"]]
    out = pd.DataFrame({
        "facts": facts.groupby("relation").size(),
        "single_token": usable.groupby("relation").size(),
        "prompts": prompts.groupby("relation").size(),
        "prompt_accuracy": prompts.groupby("relation")["correct"].mean(),
        "known_any": usable[usable["n_prompts"] > 0].groupby("relation")["any_correct"].mean(),
        "known_most": usable[usable["n_prompts"] > 0].groupby("relation")["most_correct"].mean(),
        "n_known_any": usable.groupby("relation")["any_correct"].sum(),
        "n_known_most": usable.groupby("relation")["most_correct"].sum(),
    })
    ints = ["facts", "single_token", "prompts", "n_known_any", "n_known_most"]
    out[ints] = out[ints].fillna(0).astype("int64")
    return out.reset_index().rename(columns={"index": "relation"})

