"""Everything that owns Redis keys: the state that makes the guarantees hold.

`keys.py` builds every key; each step that reads and writes is one Lua script in `lua/`
(loaded by `scripts.py`), with every key it touches passed in KEYS. `ordering.py` (newest
wins, one fate per event), `retry_schedule.py` (delayed retries), `dead_letters.py` and
`dead_filter.py` (dead letters and how an operator picks them), `outcomes.py` (fate
counters), `flow.py` (shared API budget, pace and circuit), `fetch.py` (messages held by
consumers), `connection.py` (how we and kombu reach Redis). `stores.py` builds them all.

May import: `settings`, `alibaba` (result types and error kinds only), the contract.
Never Celery or kombu, and nothing from ops, produce, worker or cli.
"""
