"""iopo-fast: a fast trainer for IOPO (Input-Output Preference Optimization, arXiv 2411.06208).

The public API; see the README. `iopo_fast.naive` is the naive implementation that every fast path is
tested against (`iopo_fast.reference` is its earlier name, kept for existing code).
"""

from .data.examples import DPOExample, IOPOExample, SFTExample
from .loss import DPO, IOPO, OBJECTIVES, SFT, Objective, PreferenceLoss, SFTLoss, dpo_loss, iopo_loss
from .model import naive
from .model.packing import Batch, PackedBatch, PaddedBatch, pack_examples, pad_examples
from .model.preference_model import FusedLMHead, PreferenceModel, PreferenceOutput

reference = naive

__all__ = [
    "DPO", "IOPO", "OBJECTIVES", "SFT", "Batch", "DPOExample", "FusedLMHead", "IOPOExample", "Objective",
    "PackedBatch", "PaddedBatch", "PreferenceLoss", "PreferenceModel", "PreferenceOutput", "SFTExample", "SFTLoss",
    "dpo_loss", "iopo_loss", "naive", "pack_examples", "pad_examples", "reference",
]
