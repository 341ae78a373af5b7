#!/usr/bin/env python3
"""The bench record as a Markdown table, for docs/bench.md.

    python bench/report.py                          # print the table of bench/latest.json
    python bench/report.py --write docs/bench.md    # put it between the file's bench-table markers
    python bench/report.py --check docs/bench.md    # exit 1 if the file's table is not the record's

The table is rendered from the record alone (bench/run.py writes it), so that the figures quoted
in the docs are the ones measured, with the machine and commit they were measured on, and a
test can keep the two in step with `--check`. Only the lines between `<!-- bench-table:begin -->`
and `<!-- bench-table:end -->` are the report's; the prose around them is left as it is.
"""

from __future__ import annotations

import argparse
import difflib
import json
import sys
from datetime import datetime, timezone
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
RECORD = REPO / "bench" / "latest.json"
DOC = REPO / "docs" / "bench.md"
BEGIN, END = "<!-- bench-table:begin -->", "<!-- bench-table:end -->"
FORMAT = 2  # bench/run.py's record format this renders


class ReportError(Exception):
    pass


def load(path: Path) -> dict:
    try:
        record = json.loads(path.read_text())
    except (OSError, ValueError) as exc:
        raise ReportError(f"cannot read the record {path}: {exc}") from exc
    if record.get("format") != FORMAT:
        raise ReportError(f"{path} is a record of an older format (no min / median / max per figure); "
                          f"make a new one with `python bench/run.py` (a full run of every case)")
    return record


def number(x: float) -> str:
    """Three significant digits, thousands grouped; no exponents."""
    if abs(x) >= 1000:
        return f"{x:,.0f}"
    if x == 0:
        return "0"
    text = f"{x:.3g}"
    return f"{x:.{max(0, -int(f'{abs(x):e}'.split('e')[1]) + 2)}f}" if "e" in text else text


def spread(values: dict[str, float] | None, unit: str = "") -> str:
    if values is None:
        return "–"
    unit = f" {unit}" if unit else ""
    return f"{number(values['median'])}{unit} ({number(values['min'])}–{number(values['max'])})"


def note(value: object) -> str:
    return number(value) if isinstance(value, float) else str(value)


def header(machine: dict) -> str:
    commit = machine["commit"][:12] + (" (tree dirty)" if machine.get("dirty") else "")
    mode = "" if machine.get("mode") == "full" and not machine.get("only") else \
        f", a try ({machine.get('mode')}, only {machine.get('only')}), not the record"
    when = datetime.fromisoformat(machine["date"]).astimezone(timezone.utc).strftime("%Y-%m-%d %H:%M UTC")
    return (f"Measured {when} at commit {commit}{mode}: {machine['cores']} cores "
            f"({machine['cpu_model']}), kernel {machine['kernel']}, Python {machine['python']}, Docker "
            f"{machine['docker']}; made with `{machine['command']}`. Each figure is the median (min–max) of its "
            "rounds; the ratio is ours / raw of each round's pair, measured one after the other.")


def render(record: dict) -> str:
    lines = [header(record["machine"]), "",
             "| case | ours | raw | ratio | rounds | target | met | notes |", "|---|---|---|---|---|---|---|---|"]
    for row in record["rows"]:
        notes = ", ".join(f"{k} {note(v)}" for k, v in row["notes"].items())
        cells = [row["what"], spread(row["ours"], row["unit"]), spread(row["raw"], row["unit"]), spread(row["ratio"]),
                 str(row["rounds"]), row["target"], "yes" if row["met"] else "no", notes]
        lines.append("| " + " | ".join(c.replace("|", "\\|") for c in cells) + " |")
    return "\n".join(lines) + "\n"


def split(text: str, path: Path) -> tuple[str, str, str]:
    """(up to and with the begin line, between, from the end line on)."""
    lines = text.splitlines(keepends=True)
    begins = [i for i, line in enumerate(lines) if line.strip() == BEGIN]
    ends = [i for i, line in enumerate(lines) if line.strip() == END]
    if len(begins) != 1 or len(ends) != 1 or ends[0] < begins[0]:
        raise ReportError(f"{path} needs one `{BEGIN}` line and, after it, one `{END}` line")
    b, e = begins[0], ends[0]
    return "".join(lines[:b + 1]), "".join(lines[b + 1:e]), "".join(lines[e:])


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--record", type=Path, default=RECORD, help="the record (default: bench/latest.json)")
    action = parser.add_mutually_exclusive_group()
    action.add_argument("--write", type=Path, nargs="?", const=DOC, metavar="FILE",
                        help="replace the table between the markers of FILE (default FILE: docs/bench.md)")
    action.add_argument("--check", type=Path, nargs="?", const=DOC, metavar="FILE",
                        help="exit 1 if FILE's table differs from the record's (default FILE: docs/bench.md)")
    args = parser.parse_args(argv)
    try:
        table = render(load(args.record))
        if args.write is None and args.check is None:
            sys.stdout.write(table)
            return 0
        path = args.write or args.check
        try:
            text = path.read_text()
        except OSError as exc:
            raise ReportError(f"cannot read {path}: {exc}") from exc
        before, current, after = split(text, path)
        if args.check is not None:
            if current == table:
                return 0
            sys.stdout.writelines(difflib.unified_diff(current.splitlines(keepends=True), table.splitlines(keepends=True),
                                                       f"{path} (its table)", f"{args.record} (rendered)"))
            print(f"{path}: its table is not the record's; run `python bench/report.py --write {path}`",
                  file=sys.stderr)
            return 1
        path.write_text(before + table + after)
        print(f"{path}: table written from {args.record}", file=sys.stderr)
        return 0
    except ReportError as exc:
        print(f"report.py: {exc}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
