"""How fast the fake API answers the real SDK, so benchmarks measure the worker, not the fake.

    .venv/bin/python bench/fake_api_speed.py [--seconds 3] [--threads 1]

Sequential (or N-thread) UpdateOutboundCallTags calls through `TagsApi` against an in-process
`FakeAlibabaApi` on loopback; prints calls per second.
"""

from __future__ import annotations

import argparse
import os
import threading
import time

from tagging_worker.alibaba.api import TagsApi
from tagging_worker.alibaba.fake_server import FakeAlibabaApi
from tagging_worker.alibaba.results import ApiSuccess
from tagging_worker.settings import load_settings


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--seconds", type=float, default=3.0)
    parser.add_argument("--threads", type=int, default=1)
    args = parser.parse_args()
    os.environ.setdefault("ALIBABA_CLOUD_ECS_METADATA_DISABLED", "true")
    with FakeAlibabaApi(credentials={"bench-id": "bench-secret"}) as fake:
        api = TagsApi(
            load_settings(
                api_endpoint=fake.endpoint,
                api_protocol="http",
                access_key_id="bench-id",
                access_key_secret="bench-secret",
            ).api_config()
        )
        done = [0] * args.threads
        deadline = time.monotonic() + args.seconds

        def loop(slot: int) -> None:
            while time.monotonic() < deadline:
                assert isinstance(api.update_tags(f"call-{slot}", '["有意向"]'), ApiSuccess)
                done[slot] += 1

        threads = [threading.Thread(target=loop, args=(n,)) for n in range(args.threads)]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
    print(
        f"{sum(done) / args.seconds:,.0f} calls/s with {args.threads} thread(s) "
        f"over {args.seconds:.0f} s"
    )


if __name__ == "__main__":
    main()
