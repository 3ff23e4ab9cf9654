"""The frontend README, docs/configuration.md and docs/contracts.md describe what the code really has."""

import re
from pathlib import Path

import pytest
from prometheus_client import generate_latest

from frontend.errors import ERROR_TABLE
from frontend.metrics import FrontendMetrics
from frontend.settings import Settings

pytestmark = pytest.mark.unit

ROOT = Path(__file__).resolve().parents[3]
README = (ROOT / "frontend" / "README.md").read_text()
CONFIGURATION = (ROOT / "docs" / "configuration.md").read_text()
CONTRACTS = (ROOT / "docs" / "contracts.md").read_text()


def _exported_metric_names() -> set[str]:
    metrics = FrontendMetrics()
    metrics.requests.labels(route="/healthz", method="GET", status="200").inc()
    metrics.in_flight.labels(route="/healthz")
    metrics.duration.labels(route="/healthz")
    metrics.time_to_first_token.labels(route="ui")
    text = generate_latest(metrics.registry).decode()
    return {name for name in re.findall(r"^# TYPE (\S+) ", text, re.M) if not name.endswith("_created")}


def test_every_setting_is_documented_with_its_env_var():
    section = CONFIGURATION.split("\n## Frontend\n", 1)[1].split("\n## ", 1)[0]
    documented = set(re.findall(r"^\| `(FRONTEND_[A-Z_0-9]+)` \|", section, re.M))
    assert documented == {f"FRONTEND_{name.upper()}" for name in Settings.model_fields}


def test_metric_names_are_exactly_the_contract_ones():
    section = CONTRACTS.split("## Metrics exported by the frontend", 1)[1].split("\n## ", 1)[0]
    contract = set(re.findall(r"^\| `(frontend_[a-z_]+)` \|", section, re.M))
    exported = {name + "_total" if name + "_total" in contract else name for name in _exported_metric_names()}
    assert exported == contract
    assert contract <= set(re.findall(r"`(frontend_[a-z_]+)`", README))


def test_every_error_status_is_in_the_readme_table():
    for spec in ERROR_TABLE.values():
        assert re.search(rf"\| {spec.status}( \+ `Retry-After`)? \| `{spec.openai_type}` / `{spec.code}` \|", README), spec
