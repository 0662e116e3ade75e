"""Putting events on the queue: the Python publisher and dead-letter replays.

Both go through the same Redis steps as every other way in (`state/ordering.py`), so events
from any of them get the same registration, coalescing and newest-wins order.

May import: `state`, `settings`, the contract. Not ops, worker or cli.
"""
