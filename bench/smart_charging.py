"""Smart charging: a slot for the composite-schedule benchmark.

Smart charging (SetChargingProfile / GetCompositeSchedule beyond the TxProfile limit that
RemoteStartTransaction carries) is not implemented, so there is nothing to measure: the result
records null rather than a number.

    python -m bench.smart_charging
"""

from __future__ import annotations

import sys
from typing import Any

from bench.common import REPO, write_result

NAME = "smart_charging"
STATUS = "not implemented (no composite schedule yet)"


def summary(report: dict[str, Any]) -> list[tuple[str, str, str]]:
    return [("composite schedule computation", STATUS, "")]


def main(argv: list[str] | None = None) -> dict[str, Any]:
    argv = sys.argv[1:] if argv is None else argv
    report: dict[str, Any] = {"status": STATUS, "composite_schedule_ms": None}
    path = write_result(NAME, report, argv)
    print(STATUS)
    print(f"-> {path.relative_to(REPO)}")
    return report


if __name__ == "__main__":
    main()
