"""Write one results page: a title, the stamp (command, commit, machine, date), then the tables an experiment's
run directories gave (`sharpen compare` output, or a command's console output), nothing typed by hand.

    python experiments/page.py results/heldout-mmlu.md --title "Held-out table: mmlu, T 0.7" \
        --command "experiments/heldout.sh mmlu 0.7 128 runs/mmlu" --runs runs/mmlu \
        --part "" runs/mmlu/table/paired.md

Each --part HEADING FILE adds a section (no heading when HEADING is empty): a .md file as it is, any other file in
a code block. --runs DIR... are the run directories read (directly or one level down): a run whose config.json
records the commit it ran on makes the stamp say so when that is not the commit writing the page. The page is
replaced atomically, so a failed experiment leaves the previous page in place.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import shutil
import sys
from collections.abc import Sequence
from pathlib import Path

from stamp import stamp


def run_commits(dirs: Sequence[Path]) -> list[str]:
    """The commits recorded in the config.json of `dirs` and of their sub-directories (where recorded)."""
    found = []
    for d in dirs:
        for conf in [d / "config.json", *sorted(d.glob("*/config.json"))]:
            try:
                recorded = json.loads(conf.read_text(encoding="utf-8"))
            except (OSError, ValueError):
                continue
            commits = recorded.get("commits") or [recorded.get("commit")] if isinstance(recorded, dict) else []
            found += [str(c) for c in commits if c]
    return found


IMAGE = re.compile(r"!\[([^\]]*)\]\(([^)\s]+)\)")


def copy_images(text: str, source: Path, page: Path) -> str:
    """Copy the local images a table links (e.g. compare's plot) next to the page, as img/<page>-<name>, and point
    the links there; a missing image becomes plain text, never a broken link."""
    def repl(m: re.Match) -> str:
        alt, target = m.groups()
        if "://" in target or target.startswith("/"):
            return m.group(0)
        src = source.parent / target
        if not src.is_file():
            return f"({alt}: {target} not found)"
        dest = page.parent / "img" / f"{page.stem}-{src.name}"
        dest.parent.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(src, dest)
        return f"![{alt}](img/{dest.name})"
    return IMAGE.sub(repl, text)


def section(heading: str, path: Path, page: Path) -> str:
    text = path.read_text(encoding="utf-8").strip("\n")
    body = copy_images(text, path, page) if path.suffix == ".md" else f"```\n{text}\n```"
    return (f"## {heading}\n\n" if heading else "") + body + "\n\n"


def page(path: Path, title: str, command: str, parts: list[tuple[str, Path]], note: str = "",
         runs: Sequence[Path] = ()) -> str:
    """The page's text (images its tables link are copied next to `path`)."""
    text = f"# {title}\n\n" + stamp(command, run_commits(runs))
    if note:
        text += note.strip() + "\n\n"
    return text + "".join(section(h, p, path) for h, p in parts)


def write(path: Path, text: str) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(text.rstrip("\n") + "\n", encoding="utf-8")
    os.replace(tmp, path)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("page", type=Path, help="the results page to write, e.g. results/heldout-mmlu.md")
    ap.add_argument("--title", required=True)
    ap.add_argument("--command", required=True, help="the command that ran the experiment (re-running it "
                                                     "rewrites the page)")
    ap.add_argument("--note", default="", help="one paragraph under the stamp: what was run, on which items")
    ap.add_argument("--part", nargs=2, action="append", default=[], metavar=("HEADING", "FILE"))
    ap.add_argument("--runs", nargs="*", type=Path, default=[], help="run directories the tables come from")
    args = ap.parse_args(argv)
    parts = [(h, Path(f)) for h, f in args.part]
    missing = [str(p) for _, p in parts if not p.is_file()]
    if missing:
        print(f"page.py: missing {', '.join(missing)}: finish the experiment first (re-run its command)",
              file=sys.stderr)
        return 2
    write(args.page, page(args.page, args.title, args.command, parts, args.note, args.runs))
    print(f"wrote {args.page}", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
