"""iopo-fast: a fast trainer for IOPO (Input-Output Preference Optimization, arXiv 2411.06208).

The public API; see docs/python-api.md. `iopo_fast.naive` is the naive implementation that every fast path is
tested against.

Each name is imported on first use (PEP 562), so that the package's light modules (the demo data
builder's constraints and trivial answers) load without torch.
"""

import importlib

# Each public name and the module that defines it (`naive` is a module of its own).
_EXPORTS = {
    "DPOExample": ".data.examples", "IOPOExample": ".data.examples", "SFTExample": ".data.examples",
    "DPO": ".loss", "IOPO": ".loss", "OBJECTIVES": ".loss", "SFT": ".loss", "Objective": ".loss",
    "PreferenceLoss": ".loss", "SFTLoss": ".loss", "dpo_loss": ".loss", "iopo_loss": ".loss",
    "naive": ".model.naive",
    "Batch": ".model.packing", "PackedBatch": ".model.packing", "PaddedBatch": ".model.packing",
    "pack_examples": ".model.packing", "pad_examples": ".model.packing",
    "FusedLMHead": ".model.preference_model", "PreferenceModel": ".model.preference_model",
    "PreferenceOutput": ".model.preference_model",
}
__all__ = sorted(_EXPORTS)


def __getattr__(name: str):
    if name not in _EXPORTS:
        raise AttributeError(f"module 'iopo_fast' has no attribute {name!r}")
    module = importlib.import_module(_EXPORTS[name], __name__)
    value = module if module.__name__.endswith(f".{name}") else getattr(module, name)
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(_EXPORTS))
