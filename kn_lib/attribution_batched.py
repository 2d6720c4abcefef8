"""The batched paths of the attribution (``kn_lib.attribution``, ``IGConfig.method``): the same weighted
gradient sums as the reference path, computed on batches of (prompt, layer, step) rows.

* ``_gradient_sums_fast`` (``method="fast"``, the default): rows join a growing batch at their own scaled
  layer; causal LMs reuse each prompt prefix's key/value cache;
* ``_gradient_sums_packed`` (``method="packed"``, the previous fast path, kept for ``benchmarks/``):
  fixed-size passes that start at their lowest scaled layer;
* ``_Batch``: several prompts as one padded batch (also used by ``experiments.exact_ablation``).

Apart from ``attribution`` because these are speed-ups of one sum, tested against its reference path;
the equations they compute are stated once, in ``attribution.integrated_gradients``.
"""

from __future__ import annotations

import copy

import torch

from .adapters import CausalLMAdapter, EncodedPrompt, ModelAdapter


HEAD_ROWS = 512  # rows per chunk of the vocabulary projection + softmax in the fast path (bounds its memory)


def _gradient_sums_fast(adapter, prompts, layers, alphas, weights, batch_rows, precision="float32") -> tuple[list[torch.Tensor], list[torch.Tensor]]:
    """Activations [L, N] and the reference's weighted gradient sums, computed at (close to) the FLOP floor:

    * scaling layer l changes nothing below l, so each (prompt, layer, step) row *joins the batch at
      its own scaled layer* from the hidden state recorded there (``ModelAdapter.growing_batch``): the
      layers run bottom-up once, block l on the rows scaled at l or below, and no row computes a layer
      below its own;
    * causal LMs: scaling the answer position changes nothing at earlier positions, so each prefix
      runs once and its key/value cache serves every row (cut per layer to the rows present there);
      only the last token is computed;
    * the rows of all prompts (padded and masked) share the batch, for big matrix products; one
      unscaled pass of all prompts records the activations and the hidden states the rows join from;
    * masked LMs: the vocabulary head runs at the answer position only; for every model it runs in
      chunks of ``HEAD_ROWS`` rows with its own backward, so the [rows, vocab] logits never all exist;
    * gradients are taken w.r.t. the scaled activations only (no weight gradients), one leaf per layer.
    """
    batch = _Batch(adapter, prompts)
    hidden_in, acts_all, returns_tuple = adapter.record(batch.pos, **batch.forward_kwargs(torch.arange(len(prompts))))
    acts_all = acts_all.double().cpu()  # [P, L, N]
    order = sorted(range(len(layers)), key=lambda i: layers[i])  # rows sorted by the layer they join at
    units = torch.cartesian_prod(torch.arange(len(prompts)), torch.arange(len(alphas))).reshape(-1, 2)  # (prompt, step)
    out = [torch.zeros(len(layers), acts_all.shape[2], dtype=torch.float64) for _ in prompts]
    units_per_pass = max(1, batch_rows // batch.tokens_per_row)  # bounds the memory of masked LMs' whole sequences
    for chunk in units.split(units_per_pass):
        u_prompt, u_step = chunk[:, 0], chunk[:, 1]
        n = len(chunk)
        # one leaf [n, N] per entry of ``layers``, in the order the rows join
        scaled = [(alphas[u_step, None] * acts_all[u_prompt, layers[i]]).to(batch.device, batch.dtype).requires_grad_(True) for i in order]
        row_layer = torch.tensor([layers[i] for i in order]).repeat_interleave(n)
        row_prompt = u_prompt.repeat(len(order))
        active = [int((row_layer <= layer).sum()) for layer in range(adapter.n_layers)]
        joining: list[torch.Tensor | None] = [None] * adapter.n_layers
        hooks = []
        for layer in range(adapter.n_layers):
            start = active[layer - 1] if layer else 0
            if active[layer] > start:
                joining[layer] = hidden_in[layer][u_prompt.to(batch.device)].repeat(layers.count(layer), *[1] * (hidden_in[layer].dim() - 1))
                mine = torch.cat([s for s, i in zip(scaled, order) if layers[i] == layer])
                hooks.append(_patch_joining_rows(adapter, layer, start, batch.pos[row_prompt[start : active[layer]]], mine))
        autocast = torch.autocast(adapter.device.type, dtype=torch.bfloat16, enabled=precision == "bfloat16")
        try:
            with adapter.growing_batch(active, joining, returns_tuple), autocast:
                hidden = adapter.final_hidden(**batch.forward_kwargs(row_prompt, active))
        finally:
            for h in hooks:
                h.remove()
        hidden = batch.answer_hidden(hidden, row_prompt)  # [rows, d_model]
        with autocast:
            grad_hidden = _head_gradient(adapter, hidden.detach(), batch.targets[row_prompt.to(batch.device)])
        grads = torch.autograd.grad(hidden, scaled, grad_hidden.to(hidden.dtype))
        for i, g in zip(order, grads):
            g = g.double().cpu() * weights[u_step, None]
            for p in range(len(prompts)):
                out[p][i] += g[u_prompt == p].sum(0)
    return list(acts_all), out


def _patch_joining_rows(adapter: ModelAdapter, layer: int, start: int, positions: torch.Tensor, scaled: torch.Tensor):
    """Hook: in a growing batch, rows ``start:`` of layer ``layer`` (those joining there) get the FFN
    activation ``scaled`` [rows, N] at their positions."""

    def hook(module, args):
        patched = args[0].clone()
        patched[torch.arange(start, len(patched), device=patched.device), positions.to(patched.device)] = scaled.to(patched.dtype)
        return (patched, *args[1:])

    return adapter.projections[layer].register_forward_pre_hook(hook)


def _head_gradient(adapter: ModelAdapter, hidden: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
    """d p(target) / d hidden for each row, the vocabulary head run in chunks of ``HEAD_ROWS`` rows."""
    grads = []
    for h, t in zip(hidden.split(HEAD_ROWS), targets.split(HEAD_ROWS)):
        h = h.detach().requires_grad_(True)
        # the head gets a non-leaf copy: torch's FlopCounterMode cannot take gradients of a module's leaf input
        p_answer = adapter.head(h.view_as(h)).float().softmax(-1).gather(1, t[:, None])
        grads.append(torch.autograd.grad(p_answer.sum(), h)[0])
    return torch.cat(grads)


def _gradient_sums_packed(adapter, prompts, layers, acts, alphas, weights, rows_per_pass) -> list[torch.Tensor]:
    """The previous fast path (kept to measure against): same sums as the reference, with four exact savings:

    * causal LMs: scaling the answer position changes nothing at earlier positions, so each prefix
      runs once and its key/value cache serves every step; only the last token is recomputed;
    * scaling layer l changes nothing below l, so a pass starts at its lowest scaled layer from the
      recorded hidden state (``ModelAdapter.start_at``);
    * (prompt, layer, step) rows of several prompts and layers share one batch, for bigger matrix
      products; prompts of different lengths are padded and masked;
    * gradients are taken w.r.t. the scaled activations only (no weight gradients).
    """
    batch = _Batch(adapter, prompts)
    n_steps = len(alphas)
    hidden_in, returns_tuple = adapter.block_inputs(**batch.forward_kwargs(torch.arange(len(prompts))))
    out = [torch.zeros(len(layers), a.shape[1], dtype=torch.float64) for a in acts]
    for units in _passes(len(prompts), layers, n_steps, rows_per_pass):
        row_prompt = torch.cat([torch.full((len(steps),), p) for p, _, steps in units])
        scaled = torch.cat([alphas[steps, None] * acts[p][layers[i]] for p, i, steps in units])
        scaled = scaled.to(batch.device, batch.dtype).requires_grad_(True)  # [rows, N]
        lowest = min(layers[i] for _, i, _ in units)
        row_layer = torch.cat([torch.full((len(steps),), i) for _, i, steps in units])
        hooks = []
        for i in row_layer.unique().tolist():
            rows = (row_layer == i).nonzero().flatten()
            hooks.append(_patch_rows(adapter, layers[i], rows, batch.pos[row_prompt[rows]], scaled))
        try:
            with adapter.start_at(lowest, hidden_in[lowest][row_prompt].contiguous(), returns_tuple):
                logits = batch.logits(adapter.model(**batch.forward_kwargs(row_prompt)), row_prompt)
        finally:
            for h in hooks:
                h.remove()
        p_answer = logits.float().softmax(-1).gather(1, batch.targets[row_prompt, None])
        (grad,) = torch.autograd.grad(p_answer.sum(), scaled)
        start = 0
        for p, i, steps in units:
            out[p][i] += (grad[start : start + len(steps)].double().cpu() * weights[steps, None]).sum(0)
            start += len(steps)
    return out


class _Batch:
    """Several prompts as one padded batch. Causal LMs: left-padded prefixes run once into a key/value
    cache, then each row is one last token on top of its prompt's cache. Masked LMs: right-padded
    whole prompts."""

    def __init__(self, adapter: ModelAdapter, prompts: list[EncodedPrompt]) -> None:
        self.adapter, self.device = adapter, adapter.device
        self.dtype = next(adapter.model.parameters()).dtype
        self.targets = torch.tensor([p.target_id for p in prompts], device=self.device)
        self.causal = isinstance(adapter, CausalLMAdapter) and all(p.answer_pos == len(p.input_ids) - 1 for p in prompts)
        pad = adapter.tokenizer.pad_token_id or 0
        if self.causal:
            self.last = torch.stack([p.input_ids[-1:] for p in prompts]).to(self.device)  # [P, 1]
            self.pos = torch.zeros(len(prompts), dtype=torch.long)  # the one token each row runs
            width = max(len(p.input_ids) - 1 for p in prompts)
            self.prefix_mask = torch.zeros(len(prompts), width, dtype=torch.long, device=self.device)
            self.position = torch.tensor([[len(p.input_ids) - 1] for p in prompts], device=self.device)
            self.cache = None
            if width > 0:
                ids = torch.full((len(prompts), width), pad, dtype=torch.long, device=self.device)
                for i, p in enumerate(prompts):  # left padding keeps every prompt's last token last
                    n = len(p.input_ids) - 1
                    if n:
                        ids[i, width - n :] = p.input_ids[:-1]
                        self.prefix_mask[i, width - n :] = 1
                positions = (self.prefix_mask.cumsum(-1) - 1).clamp(min=0)
                with torch.no_grad():
                    out = adapter.model(input_ids=ids, attention_mask=self.prefix_mask, position_ids=positions, use_cache=True)
                self.cache = getattr(out, "cache", None) or out.past_key_values
        else:
            width = max(len(p.input_ids) for p in prompts)
            self.ids = torch.full((len(prompts), width), pad, dtype=torch.long, device=self.device)
            self.mask = torch.zeros(len(prompts), width, dtype=torch.long, device=self.device)
            for i, p in enumerate(prompts):
                self.ids[i, : len(p.input_ids)] = p.input_ids
                self.mask[i, : len(p.input_ids)] = 1
            self.pos = torch.tensor([p.answer_pos for p in prompts])
        self.tokens_per_row = 1 if self.causal else self.ids.shape[1]

    def forward_kwargs(self, rows: torch.Tensor, active: list[int] | None = None) -> dict:
        """Model inputs for batch rows that belong to the given prompts. With ``active`` (for
        ``ModelAdapter.growing_batch``), layer l's key/value cache holds only the first ``active[l]`` rows."""
        if not self.causal:
            return {"input_ids": self.ids[rows], "attention_mask": self.mask[rows]}
        past = None
        if self.cache is not None:
            index = rows.to(self.device)
            if active is None:
                past = copy.deepcopy(self.cache)
                past.batch_select_indices(index)
            else:
                past = self.adapter.cache_for_rows(self.cache, [index[:a] for a in active])
        ones = torch.ones(len(rows), 1, dtype=torch.long, device=self.device)
        return {
            "input_ids": self.last[rows], "attention_mask": torch.cat([self.prefix_mask[rows], ones], 1),
            "position_ids": self.position[rows], self.adapter.cache_argument: past, "use_cache": past is not None,
            "logits_to_keep": 1,
        }

    def answer_hidden(self, hidden: torch.Tensor, rows: torch.Tensor) -> torch.Tensor:
        """Final hidden states [rows, d_model] at each row's answer position."""
        if self.causal:
            return hidden[:, -1]
        return hidden[torch.arange(len(rows), device=hidden.device), self.pos[rows].to(hidden.device)]

    def logits(self, output, rows: torch.Tensor) -> torch.Tensor:
        """Logits [rows, vocab] at each row's answer position."""
        if self.causal:
            return output.logits[:, -1]
        return output.logits[torch.arange(len(rows)), self.pos[rows]]


def _passes(n_prompts: int, layers: list[int], n_steps: int, rows_per_pass: int) -> list[list[tuple[int, int, torch.Tensor]]]:
    """Pack (prompt, layer index, step indices) units into passes of at most ``rows_per_pass`` rows,
    layers in ascending order so that each pass starts as high in the model as it can."""
    units = [
        (p, i, steps)
        for i in sorted(range(len(layers)), key=lambda i: layers[i])
        for p in range(n_prompts)
        for steps in torch.arange(n_steps).split(rows_per_pass)
    ]
    passes: list[list[tuple[int, int, torch.Tensor]]] = [[]]
    for unit in units:
        if passes[-1] and sum(len(s) for _, _, s in passes[-1]) + len(unit[2]) > rows_per_pass:
            passes.append([])
        passes[-1].append(unit)
    return passes


def _patch_rows(adapter: ModelAdapter, layer: int, rows: torch.Tensor, positions: torch.Tensor, scaled: torch.Tensor):
    """Hook: in batch row r (of ``rows``), layer ``layer``'s activation at that row's position becomes
    ``scaled[r]``."""

    def hook(module, args):
        patched = args[0].clone()
        patched[rows, positions.to(patched.device)] = scaled[rows].to(patched.dtype)
        return (patched, *args[1:])

    return adapter.projections[layer].register_forward_pre_hook(hook)
