"""`tagging-worker circuit ...`: see the API circuit, and close it as soon as the set-up is fixed.

While the circuit is open, workers take no messages and one probe call goes per cool-down
(TAGGING_CIRCUIT_SYSTEMIC_COOLDOWN_SECONDS after a credentials, permission, clock or balance
failure). Once the cause is fixed, `probe` proves it with a signed request that changes
nothing and closes the circuit, so workers resume at once; `reset` closes it on the operator's
word. Either way, a set-up still broken opens it again at the next call.
"""

from __future__ import annotations

from typing import Any

import typer

from tagging_worker.alibaba.api import TagsApi
from tagging_worker.cli.support import JsonFlag, complain, out, stores_or_exit
from tagging_worker.ops.doctor import describe, explain
from tagging_worker.state.flow import Flow, Transition

circuit = typer.Typer(
    rich_markup_mode="markdown",
    help="See the API circuit; probe or reset it once the set-up is fixed.",
    no_args_is_help=True,
)

SHOWN = ("circuit", "circuit_kind", "circuit_cause", "circuit_retry_in", "failures_in_a_row")
"""The circuit's part of `Flow.snapshot`, under the names `status --json` gives them."""


@circuit.command()
def status(as_json: JsonFlag = False) -> None:
    """The circuit's state, what opened it and when the workers' next probe may go."""
    snapshot = stores_or_exit().flow.snapshot()
    if as_json:
        out.print_json(data={key: snapshot[key] for key in SHOWN})
        return
    lines = [f"circuit: {snapshot['circuit']}"]
    if snapshot["circuit"] != "closed":
        lines += [
            f"kind: {snapshot['circuit_kind']}",
            f"cause: {snapshot['circuit_cause']}",
            f"probe in: {snapshot['circuit_retry_in']:.0f} s",
        ]
    lines.append(f"failures in a row: {snapshot['failures_in_a_row']}")
    for line in lines:
        out.print(line, markup=False, highlight=False, soft_wrap=True)


@circuit.command()
def probe() -> None:
    """Send a signed request that changes nothing, now. Answered on its merits: the circuit
    closes and workers resume at once. Otherwise: what is wrong, exit 1, the circuit as it was.
    """
    stores = stores_or_exit()
    checked = TagsApi(stores.settings.api_config()).check()
    if not checked.answered:
        failure = explain(stores.settings, checked)
        state = stores.flow.snapshot()["circuit"]
        complain(
            f"tagging-worker: the probe was not answered on its merits: {failure.part}: "
            f"{failure}; the circuit stays {state}"
        )
        raise SystemExit(1)
    _close(stores.flow, f"the API answered the probe on its merits ({describe(checked)})")


@circuit.command()
def reset() -> None:
    """Close the circuit now, without a call: workers resume at once. If the set-up is still
    broken, their first call opens it again."""
    _close(stores_or_exit().flow, "reset")


def _close(flow: Flow, why: str) -> None:
    before = flow.snapshot()
    transition, due = flow.close()
    if transition is Transition.UNCHANGED:
        said = f"{why}: the circuit was closed already"
    else:
        said = (
            f"{why}: circuit closed (was {_was(before)}); workers take messages again, and "
            f"{due} delayed retries it kept waiting are due now"
        )
    out.print(said, markup=False, highlight=False, soft_wrap=True)


def _was(snapshot: dict[str, Any]) -> str:
    return f"{snapshot['circuit']}, {snapshot['circuit_kind']}: {snapshot['circuit_cause']}"
