"""What a worker takes from its command line and what from the settings: the same whether
`tagging-worker worker` or `celery -A tagging_worker worker` started it.

Both run Celery's `worker` command, so one `worker_init` handler sees the parsed command line
and the worker after its queues are chosen and before it sets up logging, names its consumer
or takes a message:

- the queue is TAGGING_QUEUE (the app's `task_queues`); see `queue_refusal` for `-Q`;
- the log level is TAGGING_LOG_LEVEL unless `--loglevel` was given: Celery's own default
  (WARNING) would otherwise win. The format is always TAGGING_LOG_FORMAT (`app.py`);
- the node name is unique per process on a host unless `-n/--hostname` was given: Celery's
  default, `celery@HOST`, is the same for every worker on a host, and two workers sharing a
  name answer `status`, `celery inspect` and Flower as one;
- mingle and gossip are off: mingle spends a second at start asking the other workers for
  revoked tasks, gossip has every worker follow every other worker's events; the consumption
  gate and the fetch registry already keep workers apart without either.
"""

from __future__ import annotations

import sys
from collections.abc import Iterable
from typing import Any

import click
from celery import Celery, signals
from celery.utils.log import mlevel
from celery.utils.nodenames import anon_nodename
from click.core import ParameterSource

from tagging_worker.settings import Settings

NOT_GIVEN = (None, ParameterSource.DEFAULT, ParameterSource.DEFAULT_MAP)


def install(app: Celery, settings: Settings) -> None:
    """Connects the handler for workers of `app` (the signal is global: other apps' workers in
    the same process are left alone)."""

    def on_worker_init(sender: Any, **kwargs: Any) -> None:
        if sender.app is not app:
            return
        refusal = queue_refusal(settings.queue, sender.app.amqp.queues.consume_from)
        if refusal:
            print(f"tagging-worker: {refusal}", file=sys.stderr)
            raise SystemExit(2)
        # The consumer's bootsteps read these from the worker's options, after this signal.
        sender.options.update(without_mingle=True, without_gossip=True)
        given = given_options()
        if given is None:
            return
        if "loglevel" not in given:
            sender.loglevel = mlevel(settings.log_level)
        if "hostname" not in given:
            sender.hostname = unique_nodename()

    signals.worker_init.connect(on_worker_init, weak=False)


def queue_refusal(queue: str, consumed: Iterable[str]) -> str | None:
    """Why a worker must not consume `consumed` with TAGGING_QUEUE `queue`, or None.

    Refused (exit 2) rather than warned about: everything else the worker does goes by
    TAGGING_QUEUE. Its retries and held-back events go back on that queue, the circuit pauses
    that queue, and `status` and the metrics count that queue. A worker consuming another one
    would take events it then parks where perhaps no worker listens, while looking idle to
    every tool. A warning scrolls past; a worker that does not start is noticed before any
    event goes astray. `-Q` naming TAGGING_QUEUE itself is accepted, so command lines written
    for the default keep working."""
    names = sorted(consumed)
    if names == [queue]:
        return None
    return (
        f"this worker would consume {', '.join(names) or 'no queue'}, but TAGGING_QUEUE is "
        f"{queue}: leave out -Q/-X (the worker consumes TAGGING_QUEUE) or set TAGGING_QUEUE"
    )


def given_options() -> set[str] | None:
    """The worker command's options given on its command line (or in Celery's CELERY_WORKER_*
    variables) rather than left at Celery's defaults; None when no command line built this
    worker (its maker chose every value)."""
    ctx = click.get_current_context(silent=True)
    if ctx is None:
        return None
    return {name for name in ctx.params if ctx.get_parameter_source(name) not in NOT_GIVEN}


def unique_nodename() -> str:
    """`tagging-PID@HOST` (Celery's own scheme for its nameless nodes): no two live processes
    on a host share a pid, and containers (a pid namespace each) get distinct host names."""
    return anon_nodename(prefix="tagging-")
