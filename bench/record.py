"""Run one benchmark and write its output into its section of results/performance.md, stamped.

    python bench/record.py sampling.py                           # the section 'sampling'
    python bench/record.py --section roofline sampling.py --threads 1 --prompts 8 --n 8 --tokens 48
    python bench/record.py --page results/performance-gpu.md sampling.py --device cuda

The benchmark runs as `python bench/SCRIPT ARGS` (its output also goes to the terminal). On success its section,
between `<!-- section: NAME -->` and `<!-- /section: NAME -->`, is replaced by the stamp (command, commit,
machine, date) and the output; a new section is appended at the end. The other sections keep their own stamps.
A failed benchmark leaves the page as it was.
"""

from __future__ import annotations

import argparse
import os
import re
import subprocess
import sys
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parent / "experiments"))

from stamp import stamp  # noqa: E402  (experiments/stamp.py: one stamp for every results page)

PAGE = HERE.parent / "results" / "performance.md"
TITLE = "# Performance\n\nOne section per benchmark, each written by `python bench/record.py` with its own stamp.\n"


def markers(name: str) -> tuple[str, str]:
    return f"<!-- section: {name} -->", f"<!-- /section: {name} -->"


def replace_section(page: str, name: str, body: str) -> str:
    """`page` with section `name`'s content replaced by `body` (appended, with a heading, if it has none)."""
    start, end = markers(name)
    block = f"{start}\n{body.strip()}\n{end}"
    pattern = re.compile(re.escape(start) + r".*?" + re.escape(end), re.S)
    if pattern.search(page):
        return pattern.sub(lambda _: block, page, count=1)
    return page.rstrip("\n") + f"\n\n## {name}\n\n{block}\n"


def run(script: str, args: list[str]) -> str:
    """Run bench/SCRIPT with `args`, echo its output, return it; exits with its code if it fails."""
    proc = subprocess.Popen([sys.executable, str(HERE / script), *args], stdout=subprocess.PIPE, text=True,
                            cwd=HERE.parent)
    lines = []
    for line in proc.stdout:
        sys.stdout.write(line)
        lines.append(line)
    if proc.wait():
        sys.exit(f"record.py: {script} failed (exit {proc.returncode}); the page is left as it was")
    return "".join(lines)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--page", type=Path, default=PAGE, help="the results page (default: results/performance.md)")
    ap.add_argument("--section", default=None, help="section name (default: the script's name without .py)")
    ap.add_argument("script", help="a benchmark in bench/, e.g. sampling.py")
    ap.add_argument("args", nargs=argparse.REMAINDER, help="the benchmark's own options")
    args = ap.parse_args(argv)
    if not (HERE / args.script).is_file():
        ap.error(f"no benchmark bench/{args.script}")
    name = args.section or Path(args.script).stem
    output = run(args.script, args.args)
    own = [*(["--page", str(args.page)] if args.page != PAGE else []), *(["--section", name] if args.section else [])]
    command = " ".join(["python bench/record.py", *own, args.script, *args.args])
    body = stamp(command) + f"`python bench/{' '.join([args.script, *args.args])}`:\n\n```\n{output.strip()}\n```"
    page = args.page.read_text(encoding="utf-8") if args.page.exists() else TITLE
    tmp = args.page.with_name(args.page.name + ".tmp")
    tmp.write_text(replace_section(page, name, body), encoding="utf-8")
    os.replace(tmp, args.page)
    print(f"wrote section '{name}' of {args.page}", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
