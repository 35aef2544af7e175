"""The taxonomy of constraints: types, their dimensions, and which dimension a constraint belongs to.

The default is TRACE's, from the IOPO paper (arXiv 2411.06208): 5 types (Content, Situation, Style,
Format, Example) and 26 dimensions, in `taxonomy.json` beside this module. Each dimension has its
English name, its label in TRACE's released evaluation file (`levels2`, in Chinese), a description,
example constraints, and the program checkers (IFEval and IFBench ids, with example arguments) that
can verify a constraint of it; a dimension with none is left to an LLM judge.

A user's own file in the same format replaces it. It is validated when read: a type or dimension
without a name, a name or label used twice, a checker id listed under two dimensions, or a checker
that does not take its example arguments is a one-line error naming the file. A checker whose benchmark's
package is not installed is not validated: reading the taxonomy, which every evaluation does, needs no package.
"""

from __future__ import annotations

from dataclasses import dataclass
from functools import cached_property
from pathlib import Path

from .checks import CheckError, make_check
from ..utils import read_json
from .offline_resources import MissingEvaluationPackage

DEFAULT_TAXONOMY = Path(__file__).resolve().parent / "taxonomy.json"


class TaxonomyError(ValueError):
    """A taxonomy file that cannot be used; the message names the file and the reason."""


@dataclass(frozen=True)
class Dimension:
    name: str
    type: str
    trace_label: str
    description: str
    examples: tuple[str, ...]
    checks: tuple[dict, ...]  # {"id": ..., "kwargs": {...}}: checkers that verify a constraint of this dimension


@dataclass(frozen=True)
class Taxonomy:
    name: str
    dimensions: tuple[Dimension, ...]

    @property
    def types(self) -> tuple[str, ...]:
        return tuple(dict.fromkeys(dimension.type for dimension in self.dimensions))

    def classify(self, label: str) -> Dimension | None:
        """The dimension a constraint belongs to, from its label (a dimension's name in any case, or its TRACE
        label) or its checker id; None if the taxonomy does not know it."""
        return self._index.get(label.strip().lower())

    @cached_property
    def _index(self) -> dict[str, Dimension]:
        index = {}
        for dimension in self.dimensions:
            keys = [dimension.name, dimension.trace_label, *(check["id"] for check in dimension.checks)]
            index.update((key.lower(), dimension) for key in keys if key)
        return index


def load_taxonomy(path: str | Path | None = None) -> Taxonomy:
    """The taxonomy in `path` (default: TRACE's, `DEFAULT_TAXONOMY`), validated."""
    path = Path(path or DEFAULT_TAXONOMY)
    data = read_json(path, TaxonomyError)
    try:
        types = data["types"]
        dimensions = tuple(_dimension(entry, kind["name"]) for kind in types for entry in kind["dimensions"])
        taxonomy = Taxonomy(str(data.get("name", path.stem)), dimensions)
    except (AttributeError, KeyError, TypeError, ValueError) as error:
        raise TaxonomyError(f"{path}: not a taxonomy ({{'types': [{{'name', 'dimensions': [...]}}]}}): "
                            f"{_reason(error)}") from None
    _check_unique(taxonomy, path)
    return taxonomy


def _dimension(entry: dict, type_name: str) -> Dimension:
    if not isinstance(entry, dict):
        raise ValueError(f"a dimension is an object, got {entry!r}")
    if not isinstance(type_name, str) or not type_name or not isinstance(entry.get("name"), str) or not entry["name"]:
        raise ValueError("every type and dimension needs a name")
    checks = tuple(entry.get("checks", ()))
    for check in checks:
        try:
            make_check(check["id"], check["kwargs"], "an instruction")
        except MissingEvaluationPackage:
            pass  # its package is not installed: no constraint of it can be checked here either
        except (CheckError, KeyError, TypeError) as error:
            raise ValueError(f"dimension {entry['name']!r}: {error}") from None
    return Dimension(entry["name"], type_name, str(entry.get("trace_label", "")), str(entry.get("description", "")),
                     tuple(entry.get("examples", ())), checks)


def _check_unique(taxonomy: Taxonomy, path: Path) -> None:
    """`TaxonomyError` if a name, label or checker id would classify constraints into two dimensions."""
    seen: dict[str, str] = {}
    for dimension in taxonomy.dimensions:
        keys = {dimension.name, dimension.trace_label, *(check["id"] for check in dimension.checks)} - {""}
        for key in keys:
            other = seen.setdefault(key.lower(), dimension.name)
            if other != dimension.name:
                raise TaxonomyError(f"{path}: {key!r} belongs to two dimensions, {other!r} and {dimension.name!r}")


def _reason(error: Exception) -> str:
    return f"missing {error}" if isinstance(error, KeyError) else str(error)
