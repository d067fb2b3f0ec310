"""The API fuzzed from its own OpenAPI schema (schemathesis): no request, however malformed, gets a
5xx; every answer is JSON-shaped as OpenAI's errors are."""

from __future__ import annotations

import os

import pytest
import schemathesis
from hypothesis import HealthCheck, settings

from mentor.server.app import create_app
from mentor.server.settings import ServerSettings

TOKEN = "fuzz-token"


def _app(tmp_path_factory_dir):
    os.environ["MENTOR_API_TOKEN"] = TOKEN
    return create_app(ServerSettings(data_dir=tmp_path_factory_dir, max_upload_bytes=100_000), start_scheduler=False)


@pytest.fixture(scope="module")
def app(tmp_path_factory):
    return _app(tmp_path_factory.mktemp("fuzz-server"))


def test_no_request_gets_a_server_error(app):
    """Every operation of the schema, with generated valid and invalid inputs (schemathesis + hypothesis)."""
    from hypothesis import given

    schema = schemathesis.openapi.from_asgi("/openapi.json", app, headers={"Authorization": f"Bearer {TOKEN}"})
    operations = [result.ok() for result in schema.get_all_operations()]
    assert len(operations) >= 15
    seen = {}
    for operation in operations:
        declared = set(operation.definition.raw["responses"])
        assert "422" not in declared and {"400", "401", "404"} <= declared, operation.label

        @given(case=operation.as_strategy())
        @settings(max_examples=40, deadline=None, suppress_health_check=list(HealthCheck), database=None)
        def check(case):
            response = case.call(headers={"Authorization": f"Bearer {TOKEN}"})
            seen[response.status_code] = seen.get(response.status_code, 0) + 1
            assert response.status_code < 500, (f"{case.method} {case.formatted_path}: {response.status_code} "
                                                 f"{response.text[:500]}")
            if response.status_code >= 400:  # an error the schema declares, in the shape it declares
                assert str(response.status_code) in case.operation.definition.raw["responses"], (case.method, case.formatted_path, response.status_code)
                assert set(response.json()["error"]) == {"message", "type", "param", "code"}

        check()
    assert sum(seen.values()) >= 100 and any(code < 300 for code in seen)


def test_requests_without_the_token_are_refused(app):
    from starlette.testclient import TestClient

    client = TestClient(app)
    for method, path in (("get", "/v1/models"), ("get", "/v1/files"), ("post", "/v1/fine_tuning/jobs"),
                         ("get", "/v1/fine_tuning/jobs"), ("get", "/openapi.json")):
        r = getattr(client, method)(path)
        assert r.status_code == 401 and r.json()["error"]["type"] == "authentication_error", path
    # the auth scheme's name is case-insensitive (RFC 9110); the schema says a bearer token is needed
    assert client.get("/v1/models", headers={"Authorization": f"bearer {TOKEN}"}).status_code == 200
    assert client.get("/v1/models", headers={"Authorization": f"Basic {TOKEN}"}).status_code == 401
    schema = client.get("/openapi.json", headers={"Authorization": f"Bearer {TOKEN}"}).json()
    assert schema["components"]["securitySchemes"]["bearer"]["scheme"] == "bearer"
    assert schema["paths"]["/v1/files"]["get"]["security"] == [{"bearer": []}]
