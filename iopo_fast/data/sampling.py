"""Which examples a run takes, and in which order: data sets mixed in fixed proportions, the seeded
order of the examples, epoch after epoch, and the fingerprint that says whether two runs hold the same
examples."""

from __future__ import annotations

import functools
import hashlib
import json
from collections.abc import Sequence

import torch

from .examples import Example


class MixedExamples(Sequence):
    """Examples drawn from several data sets in fixed proportions (`interleave_probs`), none repeated.

    Each data set's examples are taken in a seeded random order; the mixture is as large as the proportions
    allow without repeating an example (the data set that runs out first bounds it, LLaMA-Factory's
    `interleave_under`), and without proportions it is every example of every data set.
    """

    def __init__(self, parts: list[Sequence[Example]], proportions: list[float] | None = None, seed: int = 0):
        if proportions is None:
            counts = [len(part) for part in parts]
        else:
            total = min(len(part) / share for part, share in zip(parts, proportions))
            counts = [int(share * total + 1e-9) for share in proportions]  # 0.3 * 100 is 29.999...
        self.parts = parts
        identity = json.dumps([[examples_fingerprint(part) for part in parts], proportions, seed])
        self.fingerprint = hashlib.sha256(identity.encode()).hexdigest()[:24]
        self.index = []  # (part, position) of every example of the mixture
        for number, (part, count) in enumerate(zip(parts, counts)):
            order = torch.randperm(len(part), generator=torch.Generator().manual_seed(seed * 1_000_003 + number))
            self.index += [(number, int(position)) for position in order[:count]]

    def __len__(self) -> int:
        return len(self.index)

    def __getitem__(self, index: int) -> Example:
        part, position = self.index[index]
        return self.parts[part][position]


class ExampleOrder:
    """Example indices epoch after epoch, each epoch a permutation seeded by (seed, epoch).

    Stateless: the examples of a step follow from the step number alone, which is the data-loader
    position a checkpoint needs.
    """

    def __init__(self, num_examples: int, seed: int):
        self.num_examples, self.seed = num_examples, seed

    def step_indices(self, step: int, examples_per_step: int) -> list[int]:
        start = (step - 1) * examples_per_step
        return [self._at(position) for position in range(start, start + examples_per_step)]

    @functools.lru_cache(maxsize=4)
    def _permutation(self, epoch: int) -> list[int]:
        generator = torch.Generator().manual_seed(self.seed * 1_000_003 + epoch)
        return torch.randperm(self.num_examples, generator=generator).tolist()

    def _at(self, position: int) -> int:
        epoch, offset = divmod(position, self.num_examples)
        return self._permutation(epoch)[offset]


def examples_fingerprint(examples: Sequence[Example]) -> str:
    """A digest of `examples`, their token ids in order: the `fingerprint` of a prepared or mixed data set (a
    digest of what fixes its examples), else a digest of every example."""
    fingerprint = getattr(examples, "fingerprint", None)
    if fingerprint is not None:
        return fingerprint
    digest = hashlib.sha256()
    for example in examples:
        digest.update(repr(example).encode())
    return digest.hexdigest()[:24]
