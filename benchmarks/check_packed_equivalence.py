"""Does the packed fast path score like the naive one in the training precision, with every attention backend?

For random Llama (GQA, untied head) and Qwen2 (attention biases, tied head) models and IOPO examples
of mixed lengths, it computes the sequence scores s [B, 4] and the gradients of every parameter of
sum(w * s) (random w) three ways:

  - exact: `iopo_fast.model.naive` (each sequence alone, full logits) on a float64 copy of the model;
  - naive: the same naive path in the training dtype (bf16 on GPU, fp32 on CPU), what the
    original implementation computes;
  - packed: `PreferenceModel(model, attention_backend=...)(pack_examples(...)).scores` in the training
    dtype, once per attention backend that runs here (flash_attn, torch_varlen, reference).

It reports each one's error against exact: the largest absolute error of the scores and the largest
relative error (as a norm, per parameter) of the gradients. The packed path passes when its errors
stay within twice the naive path's, plus a floor for rounding (flash-attn's own test criterion):
it costs no accuracy that the training precision does not already cost. Exit status 1 otherwise.

On a GPU it writes benchmarks/results/packed-equivalence-<device>.md with the device, versions and
command; on CPU it runs in fp32 and only prints.

    python benchmarks/check_packed_equivalence.py [--examples 8] [--max-length 256] [--seed 0]
"""

from __future__ import annotations

import argparse
import copy
import shlex
import sys

import torch
from _results import RESULTS_DIR, device_slug, versions
from transformers import LlamaConfig, LlamaForCausalLM, Qwen2Config, Qwen2ForCausalLM

from iopo_fast import IOPOExample, PreferenceModel, pack_examples
from iopo_fast.model import naive
from iopo_fast.model.attention import BACKENDS, resolve_backend

MODELS = {
    "llama (GQA, untied)": (LlamaForCausalLM, LlamaConfig, dict(tie_word_embeddings=False)),
    "qwen2 (bias, tied)": (Qwen2ForCausalLM, Qwen2Config, dict(tie_word_embeddings=True)),
}
SHAPE = dict(vocab_size=32000, hidden_size=512, intermediate_size=1408, num_hidden_layers=4, num_attention_heads=8,
             num_key_value_heads=2)
# Rounding floors added to twice the naive error: scores are sums of hundreds of log-probs.
SCORE_FLOOR = {torch.bfloat16: 1e-2, torch.float32: 1e-4}
GRADIENT_FLOOR = {torch.bfloat16: 1e-3, torch.float32: 1e-5}


def random_examples(count: int, max_length: int, vocab_size: int, generator: torch.Generator):
    def ids() -> list[int]:
        length = int(torch.randint(1, max_length + 1, (1,), generator=generator))
        return torch.randint(0, vocab_size, (length,), generator=generator).tolist()

    return [IOPOExample(ids(), ids(), ids(), ids()) for _ in range(count)]


def scores_and_gradients(model, score, weights):
    """s = score(), and the gradient of sum(weights * s) for every parameter, in float64."""
    model.zero_grad(set_to_none=True)
    scores = score()
    (scores * weights.to(scores.dtype)).sum().backward()
    return scores.detach().double(), {name: p.grad.double() for name, p in model.named_parameters()}


def errors(result, exact) -> tuple[float, float]:
    """Largest absolute score error, and largest per-parameter relative gradient error (as a norm)."""
    scores, gradients = result
    exact_scores, exact_gradients = exact
    gradient_error = max(float((gradients[name] - g).norm() / g.norm()) for name, g in exact_gradients.items())
    return float((scores - exact_scores).abs().max()), gradient_error


def check_model(name: str, examples, weights, dtype: torch.dtype, device: torch.device, seed: int):
    """Table rows for one model, and whether every packed backend passed."""
    model_class, config_class, settings = MODELS[name]
    torch.manual_seed(seed)
    model = model_class(config_class(**SHAPE, **settings)).to(device)
    exact_model = copy.deepcopy(model).double()
    exact = scores_and_gradients(exact_model, lambda: naive.sequence_logps(exact_model, examples), weights)
    model = model.to(dtype)
    naive_errors = errors(scores_and_gradients(model, lambda: naive.sequence_logps(model, examples), weights),
                          exact)
    rows, passed = [[name, "naive (four sequences)", *naive_errors, "baseline"]], True
    batch = pack_examples(examples).to(device)
    for backend in BACKENDS[1:]:
        try:
            resolve_backend(device, dtype, backend)
        except ValueError as reason:
            rows.append([name, f"packed, {backend}", None, None, f"not run: {reason}"])
            continue
        packed_model = PreferenceModel(copy.deepcopy(model), attention_backend=backend)
        packed = scores_and_gradients(packed_model.model, lambda: packed_model(batch).scores, weights)
        score_error, gradient_error = errors(packed, exact)
        ok = (score_error <= 2 * naive_errors[0] + SCORE_FLOOR[dtype]
              and gradient_error <= 2 * naive_errors[1] + GRADIENT_FLOOR[dtype])
        passed &= ok
        rows.append([name, f"packed, {backend}", score_error, gradient_error, "pass" if ok else "FAIL"])
    return rows, passed


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--examples", type=int, default=8)
    parser.add_argument("--max-length", type=int, default=256, help="longest prompt or response, in tokens")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()
    on_cuda = torch.cuda.is_available()
    device = torch.device("cuda" if on_cuda else "cpu")
    dtype = torch.bfloat16 if on_cuda else torch.float32
    generator = torch.Generator().manual_seed(args.seed)
    examples = random_examples(args.examples, args.max_length, SHAPE["vocab_size"], generator)
    weights = torch.randn(len(examples), 4, generator=generator).to(device)

    lines = ["| model | path | max abs score error | max relative gradient error | verdict |", "|---|---|---|---|---|"]
    passed = True
    for name in MODELS:
        rows, model_passed = check_model(name, examples, weights, dtype, device, args.seed)
        passed &= model_passed
        lines += ["| " + " | ".join(f"{cell:.2e}" if isinstance(cell, float) else str(cell or "")
                                    for cell in row) + " |" for row in rows]
    device_name = torch.cuda.get_device_name() if on_cuda else "CPU"
    header = [f"- device: {device_name}", f"- versions: {versions()}",
              f"- command: `python {shlex.join(sys.argv)}`",
              f"- {args.examples} IOPO examples, prompts and responses of 1-{args.max_length} tokens, {dtype}; "
              f"errors against the float64 reference; pass: within twice the naive path's error plus "
              f"{SCORE_FLOOR[dtype]:g} (scores), {GRADIENT_FLOOR[dtype]:g} (gradients)"]
    report = "\n".join(["# Packed scoring against the naive path, in the training precision", "", *header, "",
                        *lines, ""])
    print(report)
    if on_cuda:
        RESULTS_DIR.mkdir(parents=True, exist_ok=True)
        path = RESULTS_DIR / f"packed-equivalence-{device_slug(device_name)}.md"
        path.write_text(report)
        print(f"wrote {path}")
    return 0 if passed else 1


if __name__ == "__main__":
    sys.exit(main())
