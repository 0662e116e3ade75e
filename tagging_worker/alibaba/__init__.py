"""Alibaba Cloud's side of the project.

`api.py` calls `UpdateOutboundCallTags` through the tea-openapi SDK and answers with a small
classified result (`results.py`); `classify.py` says what each error code means; `config.py`
is what the client needs to know. `fake_server.py` (with `signature.py`) is a fake of the API
that behaves like the real one, signature checks and late applies included, for tests, the
demo and local runs.

May import: the contract modules (`errors`, `reasons`, `event`, `messages`, `plain_json`).
Never the settings: `Settings.api_config()` hands the client its `ApiConfig`.
"""
