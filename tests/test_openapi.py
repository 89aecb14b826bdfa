"""The OpenAPI document: served by the daemon, committed in docs/, complete, truthful.

Completeness is checked against the code itself: every route of the app's URL map, every
typed error class anywhere in the package, and every detail key an error can carry. A new
route, error or detail without documentation fails here, as does a ``docs/openapi.json``
that was not regenerated (``python -m yoi_registryd.http.openapi > docs/openapi.json``).
"""

from __future__ import annotations

import importlib
import inspect
import json
import pkgutil
import sys
from pathlib import Path
from typing import Any

import msgspec
import pytest
import schemathesis
import trio

import yoi_registryd
from tests.conftest import StartDaemon
from yoi_registryd.errors import RegistryError
from yoi_registryd.http.app import ApiState, create_app
from yoi_registryd.http.openapi import (
    ROUTES,
    ErrorResponse,
    build_document,
    documented_rules,
    openapi_path,
)
from yoi_registryd.registry import RegistryActor

REPO = Path(__file__).parent.parent
COMMITTED = REPO / "docs" / "openapi.json"
REGENERATE = "python -m yoi_registryd.http.openapi > docs/openapi.json"


def app_document() -> tuple[Any, dict[str, Any]]:
    app = create_app(ApiState(RegistryActor(1)))
    return app, build_document(app.url_map)


def operations(document: dict[str, Any]) -> dict[str, dict[str, Any]]:
    return {
        op["operationId"]: op for methods in document["paths"].values() for op in methods.values()
    }


async def test_the_committed_document_is_the_one_the_daemon_serves(
    start_daemon: StartDaemon, tmp_path: Path
) -> None:
    d = await start_daemon(f'sources = []\n[audit]\npath = "{tmp_path / "audit.jsonl"}"\n')
    response = await d.client.get("/openapi.json")
    assert response.status_code == 200
    assert response.headers["content-type"] == "application/json"
    served = response.json()
    assert served["openapi"] == "3.1.0"
    committed = json.loads(COMMITTED.read_text())
    assert committed == served, f"docs/openapi.json is out of date: run {REGENERATE}"
    # The module's command line prints exactly what is served.
    printed = (
        await trio.run_process(
            [sys.executable, "-m", "yoi_registryd.http.openapi"], capture_stdout=True, cwd=REPO
        )
    ).stdout
    assert json.loads(printed) == served


def test_every_route_of_the_app_is_documented() -> None:
    app, document = app_document()
    rules = documented_rules(app.url_map)
    assert len(rules) >= 17
    missing = [
        f"{method} {rule}"
        for method, rule, _ in rules
        if method.lower() not in document["paths"].get(openapi_path(rule), {})
    ]
    assert not missing, f"routes without documentation (add them to ROUTES): {missing}"
    for method, rule, endpoint in rules:
        operation = document["paths"][openapi_path(rule)][method.lower()]
        assert operation["operationId"] == endpoint
        in_path = {p["name"] for p in operation.get("parameters", []) if p["in"] == "path"}
        assert in_path == set(app.url_map._rules_by_endpoint[endpoint][0].arguments)
        assert "200" in operation["responses"]
        assert "500" in operation["responses"], "every route may fail unexpectedly"


def test_every_documented_route_exists() -> None:
    app, _ = app_document()
    rules = {(method, rule) for method, rule, _ in documented_rules(app.url_map)}
    stale = sorted(set(ROUTES) - rules)
    assert not stale, f"ROUTES describes routes the app does not have: {stale}"


def test_links_name_real_operations_and_their_parameters() -> None:
    _, document = app_document()
    ops = operations(document)
    links = 0
    for op in ops.values():
        for link in op["responses"]["200"].get("links", {}).values():
            target = ops[link["operationId"]]
            names = {p["name"] for p in target.get("parameters", [])}
            assert set(link["parameters"]) <= names, (op["operationId"], link)
            links += 1
    assert links >= 20


def test_the_document_is_valid_openapi_3_1() -> None:
    _, document = app_document()
    schema = schemathesis.openapi.from_dict(document)
    schema.validate()
    assert len(list(schema.get_all_operations())) == len(operations(document))


def _typed_error_classes() -> list[type[RegistryError]]:
    """Every RegistryError subclass with a code of its own, in every module of the package."""
    for module in pkgutil.walk_packages(yoi_registryd.__path__, "yoi_registryd."):
        if not module.name.endswith("__main__"):
            importlib.import_module(module.name)
    found: list[type[RegistryError]] = []
    pending: list[type[RegistryError]] = [RegistryError]
    while pending:
        cls = pending.pop()
        pending.extend(cls.__subclasses__())
        if "code" in vars(cls) and cls.__module__.startswith("yoi_registryd."):
            found.append(cls)
    return found


def _instance(cls: type[RegistryError]) -> RegistryError:
    """An instance made with placeholder ids for every required argument."""
    args = [
        "x-1"
        for p in inspect.signature(cls).parameters.values()
        if p.default is inspect.Parameter.empty
        and p.kind in (p.POSITIONAL_ONLY, p.POSITIONAL_OR_KEYWORD)
    ]
    return cls(*args)


def test_every_typed_error_is_described_with_its_status_and_details() -> None:
    _, document = app_document()
    described = document["components"]["schemas"]["ErrorCode"]["enum"]
    classes = _typed_error_classes()
    assert len(classes) >= 20
    answered: dict[str, set[str]] = {}
    responses = [
        (status, response)
        for op in operations(document).values()
        for status, response in op["responses"].items()
    ]
    responses.append(("405", document["components"]["responses"]["MethodNotAllowed"]))
    for status, response in responses:
        schema = response.get("content", {}).get("application/json", {}).get("schema", {})
        codes = schema.get("properties", {}).get("code", {})
        for code in codes.get("enum", []):
            answered.setdefault(code, set()).add(status)
    for cls in classes:
        error = _instance(cls)
        assert error.code in described, f"{cls.__name__} ({error.code}) is not in ErrorCode"
        assert str(error.status) in answered.get(error.code, set()), (
            f"no route documents {cls.__name__} with status {error.status}"
        )
        for conceal in (True, False):
            status, body = error.wire(conceal_invisible=conceal)
            # Strict: a detail key the document does not name fails here.
            msgspec.json.decode(msgspec.json.encode(body), type=ErrorResponse)
            assert str(status) in answered.get(body["code"], set())


@pytest.mark.parametrize("method", ["DELETE", "PUT", "PATCH"])
async def test_a_wrong_method_names_the_allowed_ones(
    start_daemon: StartDaemon, tmp_path: Path, method: str
) -> None:
    d = await start_daemon(f'sources = []\n[audit]\npath = "{tmp_path / "audit.jsonl"}"\n')
    response = await d.client.request(method, "/api/runtimes")
    assert response.status_code == 405
    assert response.json()["code"] == "method_not_allowed"
    assert set(response.headers["allow"].split(", ")) == {"GET", "HEAD"}
