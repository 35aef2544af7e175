"""Decoding many prompts on a fixed number of rows, where a sequence that ends frees its row for the next prompt.

`generate` runs a batch until its longest response stops: at 1,280 new tokens, one response that runs on
keeps every row of its batch busy to the end. Here each of `rows` rows holds one sequence at a time. Free rows
take the next prompts (shortest first): they are prefilled together, their keys and values are copied into
their rows, and they decode with the others, one token per step, until they end or reach `max_new_tokens`.
When no prompt is left, the free rows leave the batch whenever half its rows are free (one copy of the
buffers each time, at most log2(rows) times).

Layout: per layer, one preallocated buffer `[rows, kv_heads, capacity, head_dim]` for the keys and one for the
values. Every row writes its next token's states at the same column `end`; a row's own tokens are a run of
columns ending there, marked in a `[rows, capacity]` mask, and its positions are kept apart (a column says
nothing of a position). A step attends over columns `[start, end]` in every row, `start` the first column of
the oldest row (masked columns cost their reads). When `end` reaches the capacity, all columns move left by
`start`, which frees at least `capacity - longest sequence` columns: with the default capacity, twice the
longest sequence, at most one move per longest sequence's worth of steps. Nothing is concatenated per step
(a `DynamicCache` copies its whole cache at every token: 30% of a decoding step at 200 tokens of context,
measured on SmolLM2-135M).

`TransformersGenerator` (`generators.py`) decodes with this; its test compares every response with
transformers' own `generate`, prompt by prompt.
"""

from __future__ import annotations

import inspect
from collections import deque
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field

import torch
from transformers import DynamicCache
from transformers.cache_utils import Cache, DynamicLayer


@dataclass
class Finished:
    """A prompt's response: its index among the prompts, the new tokens (without the end token), and whether it
    stopped at `max_new_tokens` before its end."""

    index: int
    tokens: list[int]
    cut: bool


@dataclass
class _Row:
    """The sequence a row holds: which prompt, its first column, the position of its next token, its new tokens."""

    index: int
    start: int
    position: int
    tokens: list[int] = field(default_factory=list)


@dataclass
class _Window:
    """The columns a step attends over, `[start, end]`; the new token is written at `end`. Shared by every layer."""

    start: int = 0
    end: int = 0


class _RowLayer(DynamicLayer):
    """One layer's keys and values of every row, as the model's attention sees them: `update` writes the step's
    states at the window's end and returns the window, without copying what is already there."""

    def __init__(self, keys: torch.Tensor, values: torch.Tensor, window: _Window):
        super().__init__()
        self.keys, self.values, self.window, self.is_initialized = keys, values, window, True
        self.dtype, self.device = keys.dtype, keys.device

    def update(self, key_states: torch.Tensor, value_states: torch.Tensor, *args, **kwargs):
        start, end = self.window.start, self.window.end
        self.keys[:, :, end:end + 1] = key_states
        self.values[:, :, end:end + 1] = value_states
        return self.keys[:, :, start:end + 1], self.values[:, :, start:end + 1]

    def get_seq_length(self) -> int:
        return self.window.end - self.window.start

    def get_mask_sizes(self, *args, **kwargs) -> tuple[int, int]:
        return self.window.end - self.window.start + 1, 0


class RowDecoder:
    """`decoder(prompts, max_new_tokens)` yields a `Finished` per prompt (token ids, no special tokens added),
    in the order they end. `choose(logits)` picks each row's next token from its `[rows, vocab]` logits
    (greedy: `argmax`)."""

    def __init__(self, model, rows: int, end_ids: Sequence[int], pad_id: int,
                 choose: Callable[[torch.Tensor], torch.Tensor]):
        if rows <= 0:
            raise ValueError(f"rows must be positive, got {rows}")
        self.model, self.rows, self.pad_id, self.choose = model, rows, pad_id, choose
        self.end_ids = set(end_ids)
        self.device = next(model.parameters()).device
        self.dtype = next(model.parameters()).dtype
        # transformers 5 names the cache argument `cache` (`past_key_values` still works, with a warning per call).
        self.cache_argument = "cache" if "cache" in inspect.signature(model.forward).parameters else "past_key_values"

    def __call__(self, prompts: Sequence[Sequence[int]], max_new_tokens: int,
                 capacity: int | None = None) -> Iterator[Finished]:
        """`capacity`: columns per row, at least the longest sequence plus one (default: twice the longest)."""
        if not prompts:
            return
        longest = max(len(prompt) for prompt in prompts) + max_new_tokens
        capacity = capacity or 2 * longest
        if capacity <= longest or max_new_tokens <= 0 or min(len(prompt) for prompt in prompts) == 0:
            raise ValueError(f"need non-empty prompts, max_new_tokens > 0 and capacity > {longest}, got "
                             f"{max_new_tokens} and {capacity}")
        window = getattr(self.model.config, "sliding_window", None)
        if window is not None and getattr(self.model.config, "use_sliding_window", True) and longest > window:
            raise NotImplementedError(f"sequences of up to {longest} tokens are longer than the model's sliding "
                                      f"window ({window}), which row decoding does not apply")
        self.prompts, self.max_new_tokens, self.capacity = prompts, max_new_tokens, capacity
        waiting = deque(sorted(range(len(prompts)), key=lambda index: len(prompts[index])))
        self.held: list[_Row | None] = [None] * min(self.rows, len(prompts))
        self.window, self.cache, self.mask = _Window(), None, None
        while waiting or any(self.held):
            free = [slot for slot, row in enumerate(self.held) if row is None]
            if waiting and free:
                admitted = [waiting.popleft() for _ in range(min(len(free), len(waiting)))]
                yield from self._admit(free[:len(admitted)], admitted)
            elif not waiting and len(free) * 2 >= len(self.held) and any(self.held):
                self._keep([slot for slot, row in enumerate(self.held) if row is not None])
            if any(self.held):
                yield from self._step()
        self.cache = self.mask = None  # the buffers are freed between calls

    @torch.inference_mode()
    def _admit(self, slots: list[int], indices: list[int]) -> Iterator[Finished]:
        """Prefill prompts `indices` together (left-padded, as `generate` does), copy their states into rows
        `slots`, ending at column `end`, and take each one's first token."""
        lengths = [len(self.prompts[index]) for index in indices]
        width = max(lengths)
        input_ids = torch.full((len(indices), width), self.pad_id, dtype=torch.long)
        attention_mask = torch.zeros((len(indices), width), dtype=torch.long)
        for i, (index, length) in enumerate(zip(indices, lengths)):
            input_ids[i, width - length:] = torch.tensor(self.prompts[index])
            attention_mask[i, width - length:] = 1
        input_ids, attention_mask = input_ids.to(self.device), attention_mask.to(self.device)
        position_ids = (attention_mask.cumsum(dim=1) - 1).clamp(min=0)
        prefill = DynamicCache()
        logits = self.model(input_ids=input_ids, attention_mask=attention_mask, position_ids=position_ids,
                            use_cache=True, logits_to_keep=1, **{self.cache_argument: prefill}).logits[:, -1]
        first_tokens = self.choose(logits).tolist()

        if self.cache is None:
            self._allocate(prefill)
        if not any(self.held):  # every column is free again
            self.window.start = self.window.end = 0
            self.mask.zero_()
        end = self.window.end = max(self.window.end, width)
        for layer, prefilled in zip(self.cache.layers, prefill.layers):
            layer.keys[slots, :, end - width:end] = prefilled.keys
            layer.values[slots, :, end - width:end] = prefilled.values
        self.mask[slots] = False
        self.mask[slots, end - width:end] = attention_mask.bool()
        for slot, index, length, token in zip(slots, indices, lengths, first_tokens):
            self.held[slot] = _Row(index, start=end - length, position=length)
            yield from self._take(slot, token)
        self._move_window_start()

    def _allocate(self, prefill: DynamicCache) -> None:
        """Buffers for every row's keys and values, shaped after the prefill's, and the columns' mask."""
        shape = lambda states: (len(self.held), states.shape[1], self.capacity, states.shape[3])
        self.cache = Cache(layers=[
            _RowLayer(layer.keys.new_zeros(shape(layer.keys)), layer.values.new_zeros(shape(layer.values)), self.window)
            for layer in prefill.layers])
        self.mask = torch.zeros((len(self.held), self.capacity), dtype=torch.bool, device=self.device)

    @torch.inference_mode()
    def _step(self) -> Iterator[Finished]:
        """One token for every held row (a free row attends to its own column only, and its token is dropped)."""
        if self.window.end == self.capacity:
            self._shift_left(self.window.start)
        start, end = self.window.start, self.window.end
        self.mask[:, end] = True
        visible = self.mask[:, start:end + 1]
        attention_mask = torch.zeros(visible.shape, dtype=self.dtype, device=self.device)
        attention_mask.masked_fill_(~visible, torch.finfo(self.dtype).min)
        input_ids = torch.tensor([[row.tokens[-1] if row else self.pad_id] for row in self.held], device=self.device)
        position_ids = torch.tensor([[row.position if row else 0] for row in self.held], device=self.device)
        logits = self.model(input_ids=input_ids, attention_mask=attention_mask[:, None, None, :],
                            position_ids=position_ids, use_cache=True,
                            **{self.cache_argument: self.cache}).logits[:, -1]
        self.window.end += 1
        tokens = self.choose(logits).tolist()
        for slot, row in enumerate(self.held):
            if row is not None:
                row.position += 1
                yield from self._take(slot, tokens[slot])
        self._move_window_start()

    def _take(self, slot: int, token: int) -> Iterator[Finished]:
        """Add `token` to the row's response, and free the row if it ended or reached `max_new_tokens`."""
        row = self.held[slot]
        ended = token in self.end_ids
        if not ended:
            row.tokens.append(token)
        if ended or len(row.tokens) == self.max_new_tokens:
            self.held[slot] = None
            yield Finished(row.index, row.tokens, cut=not ended)

    def _move_window_start(self) -> None:
        starts = [row.start for row in self.held if row is not None]
        self.window.start = min(starts) if starts else self.window.end

    def _shift_left(self, columns: int) -> None:
        """Move every row's columns `columns` to the left (the oldest row then starts at column 0)."""
        end = self.window.end
        for layer in self.cache.layers:
            layer.keys[:, :, :end - columns] = layer.keys[:, :, columns:end].clone()
            layer.values[:, :, :end - columns] = layer.values[:, :, columns:end].clone()
        self.mask[:, :end - columns] = self.mask[:, columns:end].clone()
        self.mask[:, end - columns:] = False
        for row in self.held:
            if row is not None:
                row.start -= columns
        self.window.start -= columns
        self.window.end -= columns

    def _keep(self, slots: list[int]) -> None:
        """Only rows `slots` stay in the batch."""
        for layer in self.cache.layers:
            layer.keys, layer.values = layer.keys[slots], layer.values[slots]
        self.mask = self.mask[slots]
        self.held = [self.held[slot] for slot in slots]
