"""The OpenAPI schema: valid OpenAPI 3, covers the contract, docs served locally, and a bounded
schemathesis run against the in-process WSGI app finds no server error."""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

import pytest
import schemathesis
import yaml
from django import urls
from django.core.management import call_command
from django.core.signals import request_finished, request_started
from django.core.wsgi import get_wsgi_application
from django.db import close_old_connections
from django.test import Client, override_settings
from hypothesis import HealthCheck, Phase, given, settings
from schemathesis.checks import not_a_server_error
from schemathesis.core.failures import FailureGroup
from schemathesis.generation import GenerationMode
from schemathesis.specs.openapi.checks import (
    content_type_conformance,
    response_headers_conformance,
    response_schema_conformance,
    status_code_conformance,
)

from respcache.models import Workload

CONTRACT_PATHS = {
    "/w/{workload}/v1/messages": "post",
    "/w/{workload}/v1/messages/count_tokens": "post",
    "/api/workloads/": "get",
    "/api/workloads/{slug}/stats/": "get",
    "/api/workloads/{slug}/misses/": "get",
    "/api/workloads/{slug}/bump/": "post",
    "/api/workloads/{slug}/purge/": "post",
}


def test_schema_is_valid_openapi_3_without_warnings(tmp_path: Path) -> None:
    """drf-spectacular's own validation (the OpenAPI 3.0 JSON schema), failing on any warning."""
    out = tmp_path / "schema.yaml"
    call_command("spectacular", "--validate", "--fail-on-warn", "--file", str(out))
    assert yaml.safe_load(out.read_text())["openapi"].startswith("3.")


def test_schema_covers_the_contract() -> None:
    response = Client().get("/api/schema/", {"format": "json"})
    assert response.status_code == 200
    schema = response.json()
    for path, method in CONTRACT_PATHS.items():
        assert method in schema["paths"][path], path
    messages = schema["paths"]["/w/{workload}/v1/messages"]["post"]
    body = messages["requestBody"]["content"]["application/json"]["schema"]
    assert body == {"$ref": "#/components/schemas/MessageParam"}
    ok = messages["responses"]["200"]
    assert set(ok["headers"]) == {"X-Respcache", "X-Respcache-Key", "Age", "X-Respcache-Miss"}
    assert ok["headers"]["X-Respcache"]["schema"]["enum"] == ["bypass", "hit", "miss", "refresh", "wait"]
    for status in ("400", "401", "403", "404", "413", "502"):
        error = messages["responses"][status]["content"]["application/json"]["schema"]
        assert error == {"$ref": "#/components/schemas/Error"}, status
    request_headers = {p["name"] for p in messages["parameters"] if p["in"] == "header"}
    assert {"Cache-Control", "anthropic-beta"} <= request_headers
    schemes = set(schema["components"]["securitySchemes"])
    assert {"ApiKeyHeader", "ApiKeyBearer", "cookieAuth"} <= schemes and "basicAuth" not in schemes
    for path in ("/api/workloads/", "/api/workloads/{slug}/bump/"):
        for operation in schema["paths"][path].values():
            assert "429" in operation["responses"], path  # the management API is throttled


CALL_OPERATIONS = {
    "/w/{workload}/v1/messages": ("messages_create", "MessageParam"),
    "/w/{workload}/v1/messages/count_tokens": ("messages_count_tokens", "CountTokensParam"),
}


def test_schema_describes_both_call_endpoints() -> None:
    """The call endpoints are plain Django views: their description comes from
    respcache.api.schema's hook, complete (body, errors, security), for POST alone."""
    schema = Client().get("/api/schema/", {"format": "json"}).json()
    for path, (operation_id, param) in CALL_OPERATIONS.items():
        assert set(schema["paths"][path]) == {"post"}, path
        operation = schema["paths"][path]["post"]
        assert operation["operationId"] == operation_id
        assert operation["tags"] == ["messages"]
        body = operation["requestBody"]["content"]["application/json"]["schema"]
        assert body == {"$ref": f"#/components/schemas/{param}"}
        for status in ("400", "401", "403", "404", "413", "429", "500", "502", "529"):
            error = operation["responses"][status]["content"]["application/json"]["schema"]
            assert error == {"$ref": "#/components/schemas/Error"}, (path, status)
        assert "200" in operation["responses"]
        assert operation["security"] == [{"ApiKeyHeader": []}, {"ApiKeyBearer": []}]
        (workload,) = [p for p in operation["parameters"] if p["in"] == "path"]
        assert (workload["name"], workload["schema"]["pattern"]) == ("workload", "^[-a-zA-Z0-9_]+$")
    assert {"MessageParam", "CountTokensParam", "TokenCount", "Error"} <= set(schema["components"]["schemas"])


# A site that mounts respcache's URLs under a prefix (ROOT_URLCONF=__name__ in the test below).
urlpatterns = [urls.path("llm/", urls.include("respcache.api.urls"))]


@override_settings(ROOT_URLCONF=__name__)
def test_call_endpoints_are_described_wherever_they_are_mounted() -> None:
    from drf_spectacular.generators import SchemaGenerator

    from respcache.api.schema import call_endpoints

    paths = SchemaGenerator().get_schema(public=True)["paths"]
    assert set(paths["/llm/w/{workload}/v1/messages"]) == {"post"}
    assert set(paths["/llm/w/{workload}/v1/messages/count_tokens"]) == {"post"}
    assert not [p for p in paths if p.startswith("/w/")]
    # The hook adds to what drf-spectacular found, and only the call views' routes.
    found = [("/x/", "x/", "GET", SchemaGenerator)]  # any callback: passed through as it came
    added = call_endpoints(list(found))
    assert added[0] == found[0]
    assert sorted((p, method) for p, _, method, _ in added[1:]) == [
        ("/llm/w/{workload}/v1/messages", "POST"),
        ("/llm/w/{workload}/v1/messages/count_tokens", "POST"),
    ]


def test_docs_are_served_with_local_assets_only() -> None:
    response = Client().get("/api/docs/")
    assert response.status_code == 200
    html = response.content.decode()
    assets = re.findall(r'(?:src|href)="([^"]+)"', html)
    assert any("swagger-ui" in a for a in assets)
    assert not [a for a in assets if a.startswith(("http:", "https:", "//"))], assets
    for asset in assets:
        if asset.startswith("/static/"):
            assert Client().get(asset).status_code == 200, asset
    assert Client().get("/api/redoc/").status_code == 200


# --- schemathesis ------------------------------------------------------------------------------

CHECKS = [
    not_a_server_error,
    status_code_conformance,
    content_type_conformance,
    response_headers_conformance,
    response_schema_conformance,
]
BOUNDED = settings(
    max_examples=12,  # per operation, mode and path variant: ~300 requests, seconds in all
    deadline=None,
    database=None,
    derandomize=True,  # the same cases every run: a failure here is reproducible, not flaky
    phases=[Phase.explicit, Phase.generate],
    suppress_health_check=list(HealthCheck),
)


@pytest.fixture
def wsgi_app() -> Any:
    """The project's WSGI app, in-process. As Django's test Client does, it must not close the
    database connection around each request: that connection holds the test's transaction."""
    for signal in (request_started, request_finished):
        signal.disconnect(close_old_connections)
    yield get_wsgi_application()
    for signal in (request_started, request_finished):
        signal.connect(close_old_connections)


@pytest.mark.django_db
def test_schemathesis_finds_no_server_error(wsgi_app: Any, make_workload: Any, make_key: Any) -> None:
    intents = make_workload("intents")
    key = make_key(intents, managed=(intents,))
    schema = schemathesis.openapi.from_wsgi("/api/schema/?format=json", wsgi_app)
    seen: dict[str, set[int]] = {}

    def auth_for(case: Any) -> dict[str, str]:
        return {"x-api-key": key}  # the key may call and manage intents (no Basic auth on the API)

    operations = [result.ok() for result in schema.get_all_operations()]
    assert {op.path for op in operations} == set(CONTRACT_PATHS)
    for operation in operations:
        # Random slugs alone would only ever see 404s: also run with the real workload's.
        variants: list[dict[str, str] | None] = [None]
        for name in ("workload", "slug"):
            if f"{{{name}}}" in operation.path:
                variants.append({name: "intents"})
        for mode in (GenerationMode.POSITIVE, GenerationMode.NEGATIVE):
            for path_parameters in variants:
                strategy = operation.as_strategy(mode, path_parameters=path_parameters)

                @BOUNDED
                @given(case=strategy)
                def run(case: Any) -> None:
                    response = case.call(headers=auth_for(case))
                    label = f"{case.operation.method.upper()} {case.operation.path}"
                    seen.setdefault(label, set()).add(response.status_code)
                    try:
                        case.validate_response(response, checks=CHECKS, headers=auth_for(case))
                    except FailureGroup as exc:
                        pytest.fail(str(exc))

                run()
    # The run reached past authentication and validation into every operation.
    assert 200 in seen["POST /w/{workload}/v1/messages"]
    assert 200 in seen["POST /w/{workload}/v1/messages/count_tokens"]
    assert 400 in seen["POST /w/{workload}/v1/messages"]
    assert 200 in seen["GET /api/workloads/{slug}/stats/"]
    assert 200 in seen["POST /api/workloads/{slug}/bump/"]
    assert Workload.objects.get(slug="intents").key_version > 1
