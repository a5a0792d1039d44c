"""Property-based fuzzing of the OpenAPI schema with schemathesis against the running API: whatever
the request, no operation answers with a server error."""

from __future__ import annotations

import pytest
import schemathesis
from hypothesis import HealthCheck, settings
from schemathesis.checks import not_a_server_error


@pytest.fixture
def api_schema(platform):
    return schemathesis.openapi.from_url(f"{platform.api}/openapi.json")


schema = schemathesis.pytest.from_fixture("api_schema")


@schema.parametrize()
@settings(max_examples=6, deadline=None, derandomize=True, suppress_health_check=list(HealthCheck))
def test_no_operation_answers_with_a_server_error(case):
    response = case.call(timeout=60)
    case.validate_response(response, checks=[not_a_server_error])
