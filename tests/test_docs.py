"""The docs kept honest where a machine can tell (issue 26).

- docs/operators.md's table of `exeunit serve` flags holds exactly the flags the command's parser
  has (hidden ones aside), each with the parser's default; any other `--flag` the page mentions
  belongs to `exeunit ps` / `exeunit id` or to a tool named in OTHER_FLAGS.
- docs/layout.md places every module of exeunit/ and requestor/ (the contract's generated code
  aside), and names nothing in those packages that does not exist.
- Every relative link in README.md and docs/*.md leads to a file, every repository path quoted in
  them exists, and every test they name is defined.
"""

from __future__ import annotations

import argparse
import ast
import re
from functools import cache
from pathlib import Path

import pytest

from exeunit.app.options import build_parser

ROOT = Path(__file__).resolve().parent.parent
DOCS = ROOT / "docs"
PAGES = [ROOT / "README.md", *sorted(DOCS.glob("*.md"))]
OPERATORS = DOCS / "operators.md"
LAYOUT = DOCS / "layout.md"
SERVE_FLAGS_HEADING = "## Every flag of `exeunit serve`"
PACKAGES = ("exeunit", "requestor")

FLAG = re.compile(r"(?<![\w-])--[a-z][a-z0-9-]*")
TABLE_FLAG = re.compile(r"^\| `(--[a-z][a-z0-9-]*)` \| ([^|]*) \|", re.MULTILINE)
NUMBER = re.compile(r"-?\d[\d,]*(?:\.\d+)?(?:e-?\d+)?")
# Flags operators.md may mention that are not `exeunit`'s: each with the file that has it.
OTHER_FLAGS = {
    "--rebuild": "images/build.py",
    "--base": "images/build.py",
    "--userns-remap": "scripts/setup.sh",  # the set-up's dockerd
    "--live-restore": "scripts/setup.sh",
}
PLACED = re.compile(r"^- `((?:exeunit|requestor)(?:\.[\w]+)*)`:", re.MULTILINE)
DOTTED = re.compile(r"`((?:exeunit|requestor)(?:\.\w+)+)`")
LINK = re.compile(r"\]\(([^)\s]+)\)")
REPO_PATH = re.compile(r"`((?:exeunit|requestor|tests|bench|scripts|deploy|images|examples|proto|docs)/[\w./-]*)")
TEST_NAME = re.compile(r"`(test_\w+)`")


def commands() -> dict[str, argparse.ArgumentParser]:
    parser = build_parser()
    sub = next(a for a in parser._actions if isinstance(a, argparse._SubParsersAction))
    return dict(sub.choices)


def flags_of(parser: argparse.ArgumentParser, hidden: bool = False) -> dict[str, argparse.Action]:
    """The parser's long flags (not --help), with or without those its help hides."""
    return {flag: action for action in parser._actions for flag in action.option_strings
            if flag.startswith("--") and flag != "--help" and (hidden or action.help != argparse.SUPPRESS)}


def section(text: str, heading: str) -> str:
    """The lines under `heading` up to the next heading of its level or above."""
    level = heading.split(" ", 1)[0]
    lines = text.splitlines()
    start = lines.index(heading)
    end = next((n for n in range(start + 1, len(lines))
                if lines[n].startswith("#") and len(lines[n].split(" ", 1)[0]) <= len(level)), len(lines))
    return "\n".join(lines[start + 1:end])


def serve_table() -> dict[str, str]:
    """docs/operators.md's serve flags table: flag -> its default cell."""
    rows = TABLE_FLAG.findall(section(OPERATORS.read_text(), SERVE_FLAGS_HEADING))
    assert rows, f"{OPERATORS.name} has no flag table under {SERVE_FLAGS_HEADING!r}"
    table: dict[str, str] = {}
    for flag, default in rows:
        assert flag not in table, f"{flag} has two rows in {OPERATORS.name}'s serve flags table"
        table[flag] = default.strip()
    return table


def test_the_serve_flag_table_has_every_flag_of_the_parser_and_no_other() -> None:
    serve = commands()["serve"]
    table = serve_table()
    missing = sorted(set(flags_of(serve)) - set(table))
    unknown = sorted(set(table) - set(flags_of(serve)))
    assert not missing, f"`exeunit serve` flags not in {OPERATORS.name}'s table: {missing}"
    assert not unknown, f"{OPERATORS.name}'s serve flags table has flags `exeunit serve` lacks: {unknown}"
    strays = sorted(set(FLAG.findall(section(OPERATORS.read_text(), SERVE_FLAGS_HEADING))) - set(flags_of(serve, True)))
    assert not strays, f"{OPERATORS.name}'s serve flags section names flags serve lacks: {strays}"


def test_the_serve_flag_table_states_the_parsers_defaults() -> None:
    serve = flags_of(commands()["serve"])
    wrong = []
    for flag, cell in serve_table().items():
        default = serve[flag].default if flag in serve else None
        if isinstance(default, bool) or default in (None, "", []):
            continue
        if isinstance(default, (int, float)):
            numbers = [float(n.replace(",", "")) for n in NUMBER.findall(cell)]
            if not numbers or numbers[0] != float(default):
                wrong.append(f"{flag}: the table says {cell!r}, the parser {default!r}")
        elif isinstance(default, str) and serve[flag].dest != "name" and default not in cell:  # --name: the host's
            wrong.append(f"{flag}: the table says {cell!r}, the parser {default!r}")
    assert not wrong, f"defaults in {OPERATORS.name} that are not the parser's:\n  " + "\n  ".join(wrong)


def test_every_flag_operators_md_mentions_exists() -> None:
    parsers = commands()
    known = {"--help"}.union(*(flags_of(parsers[name], True) for name in ("serve", "ps", "id")))
    others = {flag for flag, where in OTHER_FLAGS.items() if flag in (ROOT / where).read_text()}
    assert others == set(OTHER_FLAGS), f"OTHER_FLAGS names flags its files lack: {set(OTHER_FLAGS) - others}"
    unknown = sorted(set(FLAG.findall(OPERATORS.read_text())) - known - others)
    assert not unknown, f"{OPERATORS.name} mentions flags no command has: {unknown}"


@cache
def own_modules() -> dict[str, Path]:
    """Every module of the two packages by dotted name, the contract's generated code aside."""
    found = {}
    for package in PACKAGES:
        for path in sorted((ROOT / package).rglob("*.py")):
            if "_pb2" in path.name:
                continue
            parts = path.relative_to(ROOT).with_suffix("").parts
            found[".".join(parts[:-1] if parts[-1] == "__init__" else parts)] = path
    return found


def top_level_names(path: Path) -> set[str]:
    names: set[str] = set()
    for node in ast.parse(path.read_text()).body:
        if isinstance(node, (ast.ClassDef, ast.FunctionDef, ast.AsyncFunctionDef)):
            names.add(node.name)
        elif isinstance(node, (ast.Import, ast.ImportFrom)):
            names.update((alias.asname or alias.name).split(".")[0] for alias in node.names)
        elif isinstance(node, (ast.Assign, ast.AnnAssign)):
            targets = node.targets if isinstance(node, ast.Assign) else [node.target]
            names.update(t.id for target in targets for t in ast.walk(target) if isinstance(t, ast.Name))
    return names


def test_every_module_is_placed_in_the_layout_and_nothing_else() -> None:
    placed = PLACED.findall(LAYOUT.read_text())
    twice = sorted({name for name in placed if placed.count(name) > 1})
    missing = sorted(set(own_modules()) - set(placed))
    absent = sorted(set(placed) - set(own_modules()))
    assert not missing, f"modules {LAYOUT.name} does not place (a line `- \\`name\\`: what it is`): {missing}"
    assert not absent, f"{LAYOUT.name} places modules that do not exist: {absent}"
    assert not twice, f"{LAYOUT.name} places modules twice: {twice}"


def test_every_dotted_name_in_the_layout_exists() -> None:
    modules = own_modules()
    wrong = []
    for name in sorted(set(DOTTED.findall(LAYOUT.read_text()))):
        head, _, attribute = name.rpartition(".")
        if name not in modules and not (head in modules and attribute in top_level_names(modules[head])):
            wrong.append(name)
    assert not wrong, f"{LAYOUT.name} names what is neither a module nor a module's name: {wrong}"


@pytest.mark.parametrize("page", PAGES, ids=lambda p: str(p.relative_to(ROOT)))
def test_relative_links_lead_to_files(page: Path) -> None:
    broken = []
    for target in LINK.findall(page.read_text()):
        if "://" in target or target.startswith(("mailto:", "#")):
            continue
        if not (page.parent / target.split("#", 1)[0]).exists():
            broken.append(target)
    assert not broken, f"{page.relative_to(ROOT)} links to files that do not exist: {broken}"


@cache
def defined_tests() -> set[str]:
    return {match for path in (ROOT / "tests").rglob("test_*.py")
            for match in re.findall(r"^(?:async )?def (test_\w+)", path.read_text(), re.MULTILINE)}


@pytest.mark.parametrize("page", PAGES, ids=lambda p: str(p.relative_to(ROOT)))
def test_quoted_paths_and_tests_exist(page: Path) -> None:
    text = page.read_text()
    paths = sorted({p for p in REPO_PATH.findall(text) if not (ROOT / p.rstrip(".")).exists()})
    tests = sorted(set(TEST_NAME.findall(text)) - defined_tests())
    assert not paths, f"{page.relative_to(ROOT)} quotes paths that do not exist: {paths}"
    assert not tests, f"{page.relative_to(ROOT)} names tests that are not defined: {tests}"


def test_the_bench_table_is_the_records() -> None:
    """docs/bench.md's table is what `python bench/report.py` renders from bench/latest.json: no
    figure in the docs without the full run behind it (re-render with `--write docs/bench.md`)."""
    import subprocess
    import sys

    root = Path(__file__).resolve().parent.parent
    done = subprocess.run([sys.executable, "bench/report.py", "--check", "docs/bench.md"], cwd=root,
                          capture_output=True, text=True, timeout=60)
    assert done.returncode == 0, done.stdout + done.stderr
    record = (root / "bench" / "latest.json").read_text()
    assert '"mode": "full"' in record and '"only": null' in record, "the record must be a full run of every case"
