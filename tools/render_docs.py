"""Write the published numbers into the README and docs/ from the files that hold them.

A page holds a rendered span between two HTML comments, which neither GitHub nor MkDocs shows:

    <!-- rendered: study.table -->      a block: the marker alone on its line, the text between blank lines
    ... took <!-- rendered: quickstart.timing -->17 min 8 s in all<!-- /rendered --> ...   inline, in a sentence

The name picks a fragment of `tools/doc_fragments.py`, called with the words after it as arguments
(`<!-- rendered: study.value iopo demo prompt_level -->`); it formats its text from
`benchmarks/results/*.json` (or from `TrainConfig`, for the options table). So a new run updates the pages with one command, and a hand edit
that disagrees with its results file fails the check that CI runs (`tests/test_docs.py`).

    python tools/render_docs.py           # rewrite every span of every page
    python tools/render_docs.py --check   # exit 1, naming page, line and fragment, where a span differs
"""

from __future__ import annotations

import argparse
import re
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from doc_fragments import FRAGMENTS  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
# A marker quoted in inline code (after a backtick) is text about the markers, not a span.
SPAN = re.compile(r"(?<!`)<!-- rendered: (?P<call>[\w.-]+(?: [\w.,'-]+)*) -->(?P<text>.*?)<!-- /rendered -->", re.S)


def pages(root: Path = ROOT) -> list[Path]:
    """Every page that may hold a span: the README and the documentation."""
    return [root / "README.md", *sorted((root / "docs").rglob("*.md"))]


def rendered(name: str, arguments: list[str], block: bool) -> str:
    """The span's text: the fragment called with the words after its name ("study.value iopo demo prompt_level");
    a block keeps blank lines around it, so that Markdown parses it apart."""
    text = FRAGMENTS[name](*arguments)
    return f"\n\n{text}\n\n" if block else text


def render(page: str, where: str = "") -> tuple[str, list[str]]:
    """(`page` with every span rendered, one line per span that differed: "where:line: fragment NAME")."""
    differences = []

    def replace(match: re.Match) -> str:
        call, text = match["call"], match["text"]
        name, *arguments = call.split(" ")
        line = page.count("\n", 0, match.start()) + 1
        if name not in FRAGMENTS:
            raise SystemExit(f"{where}:{line}: no fragment named {name!r} in tools/doc_fragments.py")
        new = rendered(name, arguments, block=text.startswith("\n"))
        if new != text:
            differences.append(f"{where}:{line}: fragment {call} differs from its results file")
        return f"<!-- rendered: {call} -->{new}<!-- /rendered -->"

    return SPAN.sub(replace, page), differences


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--check", action="store_true", help="change nothing; exit 1 where a span differs")
    parser.add_argument("--root", type=Path, default=ROOT, help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    differences, used = [], set()
    for path in pages(args.root):
        page = path.read_text(encoding="utf-8")
        used.update(match["call"].split(" ")[0] for match in SPAN.finditer(page))
        new, found = render(page, str(path.relative_to(args.root)))
        differences += found
        if found and not args.check:
            path.write_text(new, encoding="utf-8")
    unused = sorted(set(FRAGMENTS) - used)
    if unused:
        print(f"fragments no page shows: {', '.join(unused)}", file=sys.stderr)
    for line in differences:
        print(line, file=sys.stderr)
    if args.check and (differences or unused):
        print("run `python tools/render_docs.py` after a new results file; never edit a span by hand",
              file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
