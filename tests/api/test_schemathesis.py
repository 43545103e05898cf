"""Fuzz every operation of the published OpenAPI schema: whatever is sent, the answer is never a 5xx."""

from __future__ import annotations

import httpx
import schemathesis
from hypothesis import HealthCheck, given, settings
from tests.api.conftest import Service

EXAMPLES = 8  # per operation; keeps the whole run well under 30 s


def test_no_server_errors_on_any_operation(service: Service) -> None:
    schema = schemathesis.openapi.from_dict(httpx.get(service.url + "/openapi.json").json())
    failures: list[str] = []
    operations = [r.ok() for r in schema.get_all_operations()]
    assert len(operations) >= 10
    for op in operations:
        _fuzz(service, op, failures)
    assert not failures, "\n".join(failures[:10])
    assert service.engine.ready


def _fuzz(service: Service, op: schemathesis.APIOperation, failures: list[str]) -> None:
    """Send EXAMPLES generated requests for one operation, recording any 5xx."""

    @settings(max_examples=EXAMPLES, deadline=None, database=None, suppress_health_check=list(HealthCheck))
    @given(case=op.as_strategy())
    def run(case: schemathesis.Case) -> None:
        response = case.call(base_url=service.url, headers=service.headers("admin"), timeout=30)
        if response.status_code >= 500:
            failures.append(f"{op.label}: {response.status_code} {response.text[:300]} for {case.body!r:.300}")

    run()
