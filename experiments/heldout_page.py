"""results/<name>.md from a held-out table that `sharpen compare --paired` wrote (OUT/table_paired.md + .png).

    python experiments/heldout_page.py OUT results/arith-heldout.md --title "..." --command "..."

The page is the stamp (command, commit, machine, date), a title and the table as compare rendered it, with its
plot copied beside the page. Nothing is typed by hand.
"""

from __future__ import annotations

import argparse
import shutil
import sys
from pathlib import Path

from stamp import stamp


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("out", type=Path, help="the experiment's run folder (holds table_paired.md)")
    ap.add_argument("page", type=Path, help="the results page to write")
    ap.add_argument("--title", required=True)
    ap.add_argument("--command", required=True)
    ap.add_argument("--intro", default="")
    args = ap.parse_args(argv)
    table = args.out / "table_paired.md"
    if not table.exists():
        print(f"{table} is missing: run the experiment's compare step first", file=sys.stderr)
        return 2
    png = table.with_suffix(".png")
    body = table.read_text(encoding="utf-8")
    if png.exists():
        target = args.page.with_suffix(".png")
        shutil.copyfile(png, target)
        body = body.replace(f"]({png.name})", f"]({target.name})")
    args.page.write_text(f"# {args.title}\n\n{stamp(args.command)}{args.intro + chr(10) * 2 if args.intro else ''}"
                         f"{body}", encoding="utf-8")
    print(f"wrote {args.page}", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
