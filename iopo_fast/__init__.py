"""iopo-fast: a fast trainer for IOPO (Input-Output Preference Optimization, arXiv 2411.06208).

The public API; see the README. `iopo_fast.reference` is the naive implementation that every fast
path is tested against.
"""

from . import reference
from .loss import DPO, IOPO, OBJECTIVES, SFT, Objective, PreferenceLoss, SFTLoss, dpo_loss, iopo_loss
from .packing import Batch, DPOExample, IOPOExample, PackedBatch, PaddedBatch, SFTExample, pack_examples, pad_examples
from .preference_model import FusedLMHead, PreferenceModel, PreferenceOutput

__all__ = [
    "DPO", "IOPO", "OBJECTIVES", "SFT", "Batch", "DPOExample", "FusedLMHead", "IOPOExample", "Objective",
    "PackedBatch", "PaddedBatch", "PreferenceLoss", "PreferenceModel", "PreferenceOutput", "SFTExample", "SFTLoss",
    "dpo_loss", "iopo_loss", "pack_examples", "pad_examples", "reference",
]
