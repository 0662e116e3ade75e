"""The files in deploy/ parse, and the alerts watch metrics the worker really exports."""

from __future__ import annotations

import re
from pathlib import Path

import yaml
from prometheus_client import CollectorRegistry

from tagging_worker.ops.metrics import Metrics
from tagging_worker.ops.monitoring import RedisCollector
from tagging_worker.settings import Settings, env_example
from tagging_worker.state.stores import Stores

DEPLOY = Path(__file__).resolve().parent.parent / "deploy"


SUFFIXES = {"counter": ("_total",), "histogram": ("_bucket", "_sum", "_count")}


def _exported(stores: Stores) -> set[str]:
    """Series names, whether or not a sample exists yet (a labelled counter has none)."""
    registry = CollectorRegistry()
    Metrics(registry)
    families = [*registry.collect(), *RedisCollector(stores).collect()]
    return {
        family.name + suffix for family in families for suffix in SUFFIXES.get(family.type, ("",))
    }


def test_every_alert_is_valid_and_watches_metrics_the_worker_exports(stores: Stores) -> None:
    rules = yaml.safe_load((DEPLOY / "prometheus" / "alerts.yml").read_text())
    exported = _exported(stores)
    alerts = [rule for group in rules["groups"] for rule in group["rules"]]
    assert alerts
    for rule in alerts:
        assert {"alert", "expr", "annotations"} <= set(rule), rule
        used = set(re.findall(r"\btagging_[a-z_]+", rule["expr"]))
        assert used <= exported, f"{rule['alert']} watches {used - exported}, not exported"


def test_the_scrape_config_loads_the_alert_rules() -> None:
    config = yaml.safe_load((DEPLOY / "prometheus" / "prometheus.yml").read_text())
    assert config["rule_files"] == ["alerts.yml"]
    assert {job["job_name"] for job in config["scrape_configs"]} >= {"tagging-worker"}


def test_the_env_example_lists_every_setting_with_its_default() -> None:
    """Regenerate with: python -c 'from tagging_worker.settings import env_example;
    print(env_example(), end="")' > deploy/tagging-worker.env.example"""
    assert (DEPLOY / "tagging-worker.env.example").read_text() == env_example()


def test_metrics_and_health_listen_on_loopback_unless_a_deployment_opens_them() -> None:
    """Unauthenticated endpoints stay off the network by default; deploy files that need
    them reachable (a pod's probes, a published container port) say so themselves."""
    assert Settings.model_fields["metrics_host"].default == "127.0.0.1"
    lines = (DEPLOY / "tagging-worker.env.example").read_text(encoding="utf-8").splitlines()
    assert "TAGGING_METRICS_HOST=127.0.0.1" in lines
    comment = lines[lines.index("TAGGING_METRICS_HOST=127.0.0.1") - 1]
    assert comment.startswith("# ") and "0.0.0.0" in comment
