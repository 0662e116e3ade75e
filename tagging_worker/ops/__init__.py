"""What operators see: reports, logs, metrics, Sentry, health, status and the doctor.

`reports.py` turns what happened to an event into one frozen record handed to hooks (logs,
metrics, Sentry); `monitoring.py` serves `/metrics`, `/livez` and `/readyz` from heartbeats
judged by `health.py`; `status.py` and `doctor.py` back the commands of the same names.

May import: `state`, `settings`, `alibaba`, the contract. Not produce, worker or cli.
"""
