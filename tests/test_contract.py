"""The generated contract code is what scripts/gen_proto.py makes from proto/ now."""

from __future__ import annotations

import importlib.util
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent


def test_generated_code_is_fresh(tmp_path: Path) -> None:
    spec = importlib.util.spec_from_file_location("gen_proto", REPO / "scripts" / "gen_proto.py")
    assert spec and spec.loader
    gen_proto = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(gen_proto)
    fresh = {p.name: p.read_bytes() for p in gen_proto.generate(tmp_path)}
    committed = {p.name: p.read_bytes() for p in (REPO / "exeunit" / "v1").glob("*_pb2*.py*")}
    assert fresh.keys() == committed.keys()
    stale = sorted(name for name in fresh if fresh[name] != committed[name])
    assert not stale, f"{stale} are stale: run python scripts/gen_proto.py and commit the result"


def test_every_enum_starts_with_unspecified() -> None:
    from exeunit.v1 import activity_pb2, market_pb2, transfer_pb2

    for module in (activity_pb2, market_pb2, transfer_pb2):
        for enum in module.DESCRIPTOR.enum_types_by_name.values():
            assert enum.values[0].number == 0 and enum.values[0].name.endswith("_UNSPECIFIED"), enum.name


def test_the_state_names_agreed_on_are_the_contracts_enum() -> None:
    from exeunit.v1 import activity_pb2
    from exeunit.v1.conventions import ACTIVITY_STATES, activity_state_name

    for name, value in activity_pb2.ActivityState.items():
        assert activity_state_name(value) == name.removeprefix("ACTIVITY_STATE_").capitalize() == ACTIVITY_STATES[value]
    assert activity_state_name(99) == "Unspecified"
