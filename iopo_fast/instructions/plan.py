"""How many constraints an instruction gets, and of which dimensions: the target distribution of expansion.

The default (`plan.json` beside this module) is TRACE's: its released evaluation set's share of
instructions with 1 to 15 constraints, and of constraints in each of the taxonomy's 26 dimensions. A
user's file in the same format replaces it (`--plan FILE`): `{"constraints_per_instruction": {"1": 200,
...}, "dimensions": {"Inclusion": 999, ...}}`, weights that need not sum to anything, dimensions named
as in the taxonomy (those left out are never drawn).

An instruction's draw is seeded by the run's seed and the record's place in its source, so a rerun plans
the same constraints for it: its requests, cached, are not asked again.
"""

from __future__ import annotations

import random
from dataclasses import dataclass
from pathlib import Path

from ..evaluation.taxonomy import Dimension, Taxonomy
from ..utils import read_json

DEFAULT_PLAN = Path(__file__).resolve().parent / "plan.json"


class PlanError(ValueError):
    """A plan file that cannot be used; the message names the file and the reason."""


@dataclass(frozen=True)
class Plan:
    counts: tuple[int, ...]
    count_weights: tuple[float, ...]
    dimensions: tuple[Dimension, ...]
    dimension_weights: tuple[float, ...]

    def draw(self, seed: str) -> list[Dimension]:
        """The dimensions of the constraints to add to one instruction (a dimension may come more than once)."""
        rng = random.Random(seed)
        [count] = rng.choices(self.counts, self.count_weights)
        return rng.choices(self.dimensions, self.dimension_weights, k=count)


def load_plan(path: str | Path | None, taxonomy: Taxonomy) -> Plan:
    """The plan in `path` (default: TRACE's), its dimensions found in `taxonomy`."""
    path = Path(path or DEFAULT_PLAN)
    data = read_json(path, PlanError)
    try:
        counts = {int(count): _weight(weight) for count, weight in data["constraints_per_instruction"].items()}
        weights = {name: _weight(weight) for name, weight in data["dimensions"].items()}
    except (KeyError, TypeError, ValueError, AttributeError) as error:
        raise PlanError(f"{path}: expected {{'constraints_per_instruction': {{count: weight}}, 'dimensions': "
                        f"{{name: weight}}}} with positive counts and weights ({error})") from None
    by_name = {name: taxonomy.classify(name) for name in weights}
    unknown = sorted(name for name, dimension in by_name.items() if dimension is None)
    if unknown:
        raise PlanError(f"{path}: {unknown[0]!r} is not a dimension of the taxonomy {taxonomy.name}")
    if not counts or min(counts) < 1 or not weights:
        raise PlanError(f"{path}: needs at least one count of 1 or more and one dimension")
    return Plan(tuple(counts), tuple(counts.values()), tuple(by_name.values()), tuple(weights.values()))


def _weight(value) -> float:
    if isinstance(value, bool) or not isinstance(value, int | float) or value <= 0:
        raise ValueError(f"{value!r} is not a positive weight")
    return float(value)
