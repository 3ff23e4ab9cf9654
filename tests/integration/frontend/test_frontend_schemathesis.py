"""Contract: requests generated from the app's own OpenAPI schema never get a server error."""

import pytest
import schemathesis
from hypothesis import HealthCheck, given, settings
from schemathesis import GenerationMode
from schemathesis.checks import not_a_server_error

pytestmark = pytest.mark.integration


@pytest.mark.parametrize("mode", [GenerationMode.POSITIVE, GenerationMode.NEGATIVE], ids=lambda m: m.value)
def test_generated_requests_never_get_a_server_error(frontend, mode):
    schema = schemathesis.openapi.from_url(f"{frontend.url}/openapi.json")
    calls: list[int] = []

    @given(case=schema.as_strategy(generation_mode=mode))
    @settings(max_examples=40, deadline=None, suppress_health_check=list(HealthCheck), derandomize=True, database=None)
    def check(case):
        response = case.call_and_validate(base_url=frontend.url, checks=[not_a_server_error], timeout=60)
        calls.append(response.status_code)

    check()
    assert len(calls) >= 20, "schemathesis generated too few requests to mean anything"
