"""The Celery worker.

`app.py` puts it together and `wiring.py` builds what the task runs with, once per process;
`tasks.py` is the story of one event; `lifecycle.py` the loops beside the consumer
(housekeeping, the consumption gate, monitoring). On the way to the task: `poison.py` and
`envelope.py` (messages that cannot run are dead-lettered, never dropped), `reliable_fetch.py`
and `broker_teardown.py` (kombu patches so a taken message is never lost). `backoff.py` and
`retry_state.py` decide retries; `failpoints.py` lets tests crash the worker at a chosen
step; `inline.py` runs the task in-process for tests. `start_options.py` makes
`tagging-worker worker` and `celery -A tagging_worker worker` take queue, log level and node
name alike; `inspection.py` answers `celery inspect` (delayed retries in `scheduled`).

May import: `ops`, `state`, `settings`, `alibaba`, the contract. Not produce or cli.
"""
