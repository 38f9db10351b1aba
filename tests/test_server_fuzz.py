"""Request bodies fuzzed from the server's own OpenAPI schema by schemathesis (every route, the
app called in-process): every answer is a 2xx or a 4xx in OpenAI's error shape, never a 5xx.
Derandomized, so a failure repeats; benchmarks are not needed: a larger run is the same test with
more examples (FUZZ_EXAMPLES)."""

import os

import pytest
import schemathesis
from hypothesis import HealthCheck, given, settings

from gemma_runtime.server import DEFAULT_MAX_BODY_BYTES, Service, create_app
from test_server import artifact  # noqa: F401  (the tiny artifact with a tokenizer)

EXAMPLES = int(os.environ.get("FUZZ_EXAMPLES", "40"))


@pytest.fixture(scope="module")
def schema(artifact):  # noqa: F811
    service = Service(artifact, max_batch=4)
    yield schemathesis.openapi.from_asgi("/openapi.json", create_app(service, None, DEFAULT_MAX_BODY_BYTES, ()))
    service.close()


def test_every_route_answers_fuzzed_bodies_without_a_server_error(schema):
    operations = [result.ok() for result in schema.get_all_operations()]
    assert {op.label for op in operations} >= {"POST /v1/completions", "POST /v1/chat/completions", "POST /tokenize",
                                               "POST /detokenize", "GET /v1/models", "GET /health"}
    answered: dict[int, int] = {}
    for operation in operations:
        @settings(max_examples=EXAMPLES, deadline=None, derandomize=True, database=None,
                  suppress_health_check=list(HealthCheck))
        @given(operation.as_strategy())
        def answers(case):
            response = case.call()
            answered[response.status_code] = answered.get(response.status_code, 0) + 1
            assert response.status_code < 500, (operation.label, case.body, response.text[:500])
            if response.status_code >= 400:
                error = response.json()["error"]
                assert error["message"] and error["type"], (operation.label, response.text[:500])

        answers()
    assert sum(answered.values()) >= 2 * EXAMPLES and any(200 <= s < 300 for s in answered)
