"""Rewrite the README's headline table from a results page: the chosen rows and columns of the page's first table,
copied cell for cell between the README's <!-- headline: PAGE --> and <!-- /headline --> markers.

    python experiments/headline.py results/arith-heldout.md --columns "method" "accuracy %" "vs base greedy" \
        --rows "base greedy" "sft (vote)"

tests/test_docs.py checks that every headline cell is the page's.
"""

from __future__ import annotations

import argparse
import re
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def first_table(text: str) -> tuple[list[str], dict[str, list[str]]]:
    """(header, {first cell: cells}) of the first Markdown table of `text`."""
    rows: list[list[str]] = []
    for line in text.splitlines():
        if line.startswith("|"):
            rows.append([c.strip() for c in line.strip().strip("|").split("|")])
        elif rows:
            break  # the first table ends at its first other line
    return rows[0], {r[0]: r for r in rows[2:]}


def headline(page: Path, columns: list[str], wanted: list[str]) -> str:
    head, rows = first_table(page.read_text(encoding="utf-8"))
    missing = [c for c in columns if c not in head] + [r for r in wanted if r not in rows]
    if missing:
        raise SystemExit(f"not in {page}: {', '.join(missing)}")
    idx = [head.index(c) for c in columns]
    lines = ["| " + " | ".join(columns) + " |", "|" + "---|" * len(columns)]
    lines += ["| " + " | ".join(rows[r][i] for i in idx) + " |" for r in wanted]
    return "\n".join(lines) + "\n"


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("page", type=Path)
    ap.add_argument("--columns", nargs="+", required=True)
    ap.add_argument("--rows", nargs="+", required=True)
    ap.add_argument("--readme", type=Path, default=ROOT / "README.md")
    args = ap.parse_args()
    rel = args.page.resolve().relative_to(ROOT).as_posix()
    text = args.readme.read_text(encoding="utf-8")
    block = f"<!-- headline: {rel} -->\n{headline(args.page, args.columns, args.rows)}<!-- /headline -->"
    new, count = re.subn(r"<!-- headline: \S+ -->\n.*?<!-- /headline -->", lambda _: block, text, flags=re.S)
    if count != 1:
        raise SystemExit(f"{args.readme} needs one <!-- headline: PAGE --> ... <!-- /headline --> block")
    args.readme.write_text(new, encoding="utf-8")
    print(f"wrote the headline of {args.readme.name} from {rel}")


if __name__ == "__main__":
    main()
