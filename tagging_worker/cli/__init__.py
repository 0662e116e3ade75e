"""The `tagging-worker` command: `main.py` (worker, publish, status, fake-api, demo, doctor),
`dead.py` (the dead-letter commands), `support.py` (settings, stores and one-line errors for
every command), `demo.py`.

May import: every wing below it.
"""
