"""iopo-fast: a fast trainer for IOPO (Input-Output Preference Optimization, arXiv 2411.06208).

The public API; see the README. `iopo_fast.reference` is the naive implementation that every fast
path is tested against.
"""

from . import reference
from .logprobs import sequence_logps
from .loss import dpo_loss, iopo_loss
from .packing import Batch, DPOExample, IOPOExample, PackedBatch, PaddedBatch, pack_examples, pad_examples

__all__ = [
    "Batch", "DPOExample", "IOPOExample", "PackedBatch", "PaddedBatch", "dpo_loss", "iopo_loss", "pack_examples",
    "pad_examples", "reference", "sequence_logps",
]
