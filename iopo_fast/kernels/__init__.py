"""The LM-head computations of iopo-fast: the fused log-prob Triton kernels, the loss over chunks of whole
examples, their PyTorch twins, and the plain full-logits computation.

Imported as `iopo_fast.kernels`, never as a top-level `kernels` package: transformers probes for a
package of that name (the Hugging Face kernel hub) when it is imported.
"""

from .example_chunks import check_example_chunks_supported, example_chunks_loss
from .full_logits import full_logits_logprobs
from .fused_logprobs import fused_logprobs, resolve_impl

__all__ = ["check_example_chunks_supported", "example_chunks_loss", "full_logits_logprobs", "fused_logprobs",
           "resolve_impl"]
