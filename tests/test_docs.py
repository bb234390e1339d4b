"""The documentation stays true to the code: the option reference is what docs/generate.py writes now, every
`sharpen ...` command shown in README.md, docs/ and results/ exists with the options it uses (and its --help
runs), and no relative link is broken. Reads files only; no model is loaded."""

from __future__ import annotations

import importlib.util
import re
from collections import Counter
from functools import cache
from pathlib import Path

import pytest

from sharpen.cli import _build_parser, main

ROOT = Path(__file__).resolve().parents[1]
PAGES = sorted([ROOT / "README.md", *(ROOT / "docs").glob("*.md"), *(ROOT / "results").glob("*.md")])
FENCE = re.compile(r"^```.*?^```", re.S | re.M)
INLINE = re.compile(r"`[^`\n]+`")
LINK = re.compile(r"!?\[[^\]]*\]\(([^)\s]+)\)")
# `sharpen CMD` or `python -m sharpen.cli CMD`, then its arguments up to the end of the shell command.
COMMAND = re.compile(r"(?:^|[\s(`$])sharpen(?:\.cli)?\s+([a-z][a-z0-9-]*)(?=\s|$)([^`|;&#\n]*)")


def _generator():
    spec = importlib.util.spec_from_file_location("docs_generate", ROOT / "docs" / "generate.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@cache
def _subparsers() -> dict:
    return {name: p for name, _, p in _generator().subcommands(_build_parser())}


def _code(text: str) -> list[str]:
    """The shell commands in fenced blocks (continuation lines joined) and in inline code spans."""
    chunks = [block.replace("\\\n", " ") for block in FENCE.findall(text)]
    chunks += [span.strip("`") for span in INLINE.findall(FENCE.sub("", text))]
    return chunks


def shown_commands(text: str) -> list[tuple[str, list[str]]]:
    """(command, its --options) for every `sharpen CMD ...` in the code of a page."""
    found = []
    for chunk in _code(text):
        for line in chunk.splitlines():
            for m in COMMAND.finditer(line):
                opts = [t.split("=", 1)[0] for t in m.group(2).split() if t.startswith("--")]
                found.append((m.group(1), opts))
    return found


def test_option_reference_is_generated_from_the_code():
    page = ROOT / "docs" / "options.md"
    assert page.read_text(encoding="utf-8") == _generator().render(), \
        "docs/options.md is out of date: run `python docs/generate.py` and commit the page"


def test_option_reference_lists_every_option_of_every_command():
    text = (ROOT / "docs" / "options.md").read_text(encoding="utf-8")
    for name, p in _subparsers().items():
        section = text.split(f"## sharpen {name}\n", 1)[1].split("\n## ", 1)[0]
        for action in p._actions:
            for flag in action.option_strings:
                if flag.startswith("--") and flag != "--help":
                    assert f"`{flag}`" in section, f"{flag} of sharpen {name} is missing from docs/options.md"


def test_the_parser_of_docs_finds_commands_and_options():
    text = ("```\nsharpen bon --task gsm8k \\\n  --n 8 --out x   # --fake in a comment\n"
            "accelerate launch -m sharpen.cli sft --lr 1e-4\n```\nRun `sharpen dpo --beta=auto` or "
            "`pip install 'sharpen[ray]'`; the sharpen package; `sharpen bon: error: argument --n: bad`.")
    assert shown_commands(text) == [("bon", ["--task", "--n", "--out"]), ("sft", ["--lr"]), ("dpo", ["--beta"])]


@pytest.mark.parametrize("page", PAGES, ids=lambda p: str(p.relative_to(ROOT)))
def test_commands_shown_exist_with_their_options(page):
    known = _subparsers()
    for command, opts in shown_commands(page.read_text(encoding="utf-8")):
        assert command in known, f"{page.name}: `sharpen {command}` is no command (choose from {', '.join(known)})"
        accepted = set(known[command]._option_string_actions)
        bad = [o for o in opts if o not in accepted]
        assert not bad, f"{page.name}: `sharpen {command}` has no option {', '.join(bad)}"


def test_every_command_shown_runs_its_help(capsys):
    commands = sorted({c for page in PAGES for c, _ in shown_commands(page.read_text(encoding="utf-8"))})
    assert {"bon", "sft", "dpo", "xpo", "grpo", "eval", "power", "compare"} <= set(commands)
    for command in commands:
        with pytest.raises(SystemExit) as done:
            main([command, "--help"])
        assert done.value.code == 0, command
        assert f"usage: sharpen {command}" in capsys.readouterr().out


def slugs(text: str) -> set[str]:
    """GitHub's anchors of the headings of a Markdown page."""
    seen: Counter = Counter()
    out = set()
    for line in FENCE.sub("", text).splitlines():
        if m := re.match(r"#{1,6}\s+(.*)", line):
            slug = re.sub(r"[^\w\- ]", "", m.group(1).strip().lower()).replace(" ", "-")
            out.add(slug if not seen[slug] else f"{slug}-{seen[slug]}")
            seen[slug] += 1
    return out


def broken_links(page: Path) -> list[str]:
    text = page.read_text(encoding="utf-8")
    bad = []
    for target in LINK.findall(INLINE.sub("", FENCE.sub("", text))):
        if re.match(r"[a-z]+:", target):  # https:, mailto:
            continue
        path, _, anchor = target.partition("#")
        dest = (page.parent / path).resolve() if path else page
        if not dest.exists():
            bad.append(f"{target} (no such file)")
        elif anchor and dest.suffix == ".md" and anchor not in slugs(dest.read_text(encoding="utf-8")):
            bad.append(f"{target} (no heading #{anchor} in {dest.name})")
    return bad


@pytest.mark.parametrize("page", PAGES, ids=lambda p: str(p.relative_to(ROOT)))
def test_no_broken_relative_links(page):
    bad = broken_links(page)
    assert not bad, f"{page.relative_to(ROOT)}: broken links: {'; '.join(bad)}"


def test_the_link_check_catches_a_broken_link(tmp_path):
    (tmp_path / "a.md").write_text("# Top\n\n## Two words\n")
    page = tmp_path / "b.md"
    page.write_text("[ok](a.md) [ok](a.md#two-words) [web](https://x.org/y.md) `[code](no.md)`\n"
                    "[gone](missing.md) [no anchor](a.md#three)\n")
    assert broken_links(page) == ["missing.md (no such file)", "a.md#three (no heading #three in a.md)"]


def _table(lines: list[str]) -> tuple[list[str], dict[str, list[str]]]:
    """(header, {first cell: cells}) of the first Markdown table in `lines` (it ends at its first other line)."""
    rows: list[list[str]] = []
    for line in lines:
        if line.startswith("|"):
            rows.append([c.strip() for c in line.strip().strip("|").split("|")])
        elif rows:
            break
    return rows[0], {r[0]: r for r in rows[2:]}


def test_readme_headline_rows_are_those_of_their_results_page():
    text = (ROOT / "README.md").read_text(encoding="utf-8")
    m = re.search(r"<!-- headline: (\S+) -->\n(.*?)<!-- /headline -->", text, re.S)
    assert m, "README.md needs its headline table between <!-- headline: PAGE --> and <!-- /headline -->"
    source = ROOT / m.group(1)
    head, rows = _table(m.group(2).splitlines())
    page_head, page_rows = _table(source.read_text(encoding="utf-8").splitlines())
    assert rows and all(h in page_head for h in head), f"columns {head} are not all in {source.name}"
    for method, cells in rows.items():
        assert method in page_rows, f"README headline row {method!r} is not in {source.name}"
        for h, cell in zip(head, cells, strict=True):
            assert cell == page_rows[method][page_head.index(h)], \
                f"README headline {method!r} / {h!r}: {cell!r} here, {page_rows[method][page_head.index(h)]!r} " \
                f"in {source.name}: copy the page's value"
