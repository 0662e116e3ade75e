"""The `tagging-worker` command: `main.py` (worker, publish, status, fake-api, demo, doctor),
`dead.py` (the dead-letter commands), `circuit.py` (see, probe and reset the API circuit),
`support.py` (settings, stores and one-line errors for every command), `demo.py`,
`celery_app.py` (the app `celery -A tagging_worker` finds).

May import: every wing below it.
"""
