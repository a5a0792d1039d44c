"""Property-based fuzzing of the OpenAPI schema with schemathesis against the running API: whatever
the request, no operation answers with a server error."""

from __future__ import annotations

import schemathesis
from hypothesis import HealthCheck, given, settings
from schemathesis.checks import not_a_server_error

EXAMPLES_PER_OPERATION = 6  # modest: the point is breadth over every operation, within CI time


def test_no_operation_answers_with_a_server_error(platform):
    schema = schemathesis.openapi.from_url(f"{platform.api}/openapi.json")
    failures, operations = {}, 0
    for result in schema.get_all_operations():
        operation = result.ok()
        operations += 1

        @given(case=operation.as_strategy())
        @settings(max_examples=EXAMPLES_PER_OPERATION, deadline=None, derandomize=True, database=None,
                  suppress_health_check=list(HealthCheck))
        def fuzz(case):
            response = case.call(timeout=60)
            case.validate_response(response, checks=[not_a_server_error])

        try:
            fuzz()
        except Exception as exc:  # noqa: BLE001 - collect every operation's failure, report them together
            failures[operation.label] = f"{type(exc).__name__}: {str(exc)[:1500]}"
    assert operations > 40
    assert not failures, "\n\n".join(f"{label}\n{text}" for label, text in failures.items())
