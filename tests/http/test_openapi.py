"""/openapi.json: generated from the types that validate requests, valid OpenAPI 3.1, and complete."""

from __future__ import annotations

import re
from typing import Any

import openapi_spec_validator

from tests.http.api_harness import ApiHarness
from tradeengine.http.api import Endpoint, operations_endpoints
from tradeengine.http.auth import ADMIN, PUBLIC
from tradeengine.http.models import PATTERN_MEANINGS, SYMBOL_PATTERN
from tradeengine.http.routes import api_endpoints

RESPONDER = re.compile(r"^on_(get|post|put|patch|delete)$")


def endpoints(api: ApiHarness) -> list[Endpoint]:
    return api_endpoints(system=api.system, pool=api.pool)


def document(api: ApiHarness) -> dict[str, Any]:
    response = api.get("/openapi.json")
    assert response.status_code == 200
    assert response.headers["content-type"].startswith("application/json")
    body: dict[str, Any] = response.json
    return body


def test_the_document_is_valid_openapi_3_1(api: ApiHarness) -> None:
    spec = document(api)
    assert spec["openapi"] == "3.1.0"
    openapi_spec_validator.validate(spec)


def test_every_responder_of_every_route_is_documented_and_nothing_else(api: ApiHarness) -> None:
    spec = document(api)
    served = {(e.path, m.group(1)) for e in endpoints(api)
              for name in dir(e.resource) if (m := RESPONDER.match(name))}
    documented_api = {(path, method) for path, item in spec["paths"].items() for method in item
                      if path.startswith("/api/")}
    assert served == documented_api
    for endpoint in operations_endpoints():
        assert endpoint.path in spec["paths"]


def test_every_api_route_documents_its_errors_in_the_one_error_shape(api: ApiHarness) -> None:
    spec = document(api)
    for endpoint in endpoints(api):
        for method in endpoint.operations:
            operation = spec["paths"][endpoint.path][method.lower()]
            statuses = set(operation["responses"])
            assert {"429", "500", "503"} <= statuses, (endpoint.path, method)  # 503: the database is down
            if endpoint.auth != PUBLIC:
                assert "401" in statuses and operation["security"] == [{"apiKey": []}]
            if endpoint.auth == ADMIN:
                assert "403" in statuses
            for status, response in operation["responses"].items():
                if int(status) >= 400:
                    schema = response["content"]["application/json"]["schema"]
                    assert schema == {"$ref": "#/components/schemas/ErrorResponse"}


def test_the_order_schema_lists_every_field_of_the_contract(api: ApiHarness) -> None:
    schemas = document(api)["components"]["schemas"]
    assert set(schemas["Order"]["properties"]) == {
        "id", "client_order_id", "symbol", "side", "type", "status", "price", "stop_price", "quantity",
        "quote_quantity", "filled_quantity", "remaining_quantity", "average_price", "time_in_force",
        "post_only", "self_trade_prevention", "reject_reason", "created_at", "updated_at", "sequence"}
    new_order = schemas["NewOrder"]
    assert new_order["additionalProperties"] is False
    assert set(new_order["required"]) == {"symbol", "side", "type"}
    assert new_order["properties"]["price"]["anyOf"][0]["type"] == "string"


def test_every_pattern_of_the_document_is_told_in_words_when_a_value_misses_it(api: ApiHarness) -> None:
    """A request field's pattern that PATTERN_MEANINGS does not put in words would reach clients as a
    regular expression in its VALIDATION_ERROR message."""
    patterns: set[str] = set()

    def walk(node: object) -> None:
        if isinstance(node, dict):
            if isinstance(node.get("pattern"), str):
                patterns.add(node["pattern"])
            for value in node.values():
                walk(value)
        elif isinstance(node, list):
            for value in node:
                walk(value)

    walk(document(api))
    assert patterns, "the document declares patterns"
    assert patterns <= set(PATTERN_MEANINGS), patterns - set(PATTERN_MEANINGS)


def test_the_batch_body_is_documented_with_its_item_schema(api: ApiHarness) -> None:
    spec = document(api)
    body = spec["paths"]["/api/v1/orders/batch"]["post"]["requestBody"]["content"]["application/json"]
    assert body["schema"] == {"$ref": "#/components/schemas/NewOrderBatch"}
    schemas = spec["components"]["schemas"]
    assert schemas["NewOrderBatch"]["properties"]["orders"] == {
        "type": "array", "items": {"$ref": "#/components/schemas/NewOrder"}, "minItems": 1, "maxItems": 100}


def test_an_optional_query_parameter_is_documented_as_allowed_empty(api: ApiHarness) -> None:
    # `symbol=` is the parameter left out (API.md writes its templates so)
    spec = document(api)
    parameters = {p["name"]: p for p in spec["paths"]["/api/v1/orders"]["get"]["parameters"]}
    assert parameters["symbol"]["allowEmptyValue"] is True and parameters["symbol"]["required"] is False


def test_every_api_route_documents_a_400_for_its_query_parameters(api: ApiHarness) -> None:
    spec = document(api)
    for path, item in spec["paths"].items():
        if path.startswith("/api/"):
            for method, operation in item.items():
                assert "400" in operation["responses"], (path, method)


def test_a_symbol_has_one_format_wherever_it_appears(api: ApiHarness) -> None:
    """Path, query and body: the format every stored pair has (the pairs table's CHECK), so a client built
    from the document accepts no symbol that no pair can have."""
    formats: dict[str, set[str]] = {}

    def walk(node: object, where: str) -> None:
        if isinstance(node, dict):
            if node.get("name") == "symbol" and "schema" in node:  # a path or query parameter
                pattern = node["schema"].get("pattern", "none")
                formats.setdefault(pattern, set()).add(f"{where} ({node['in']})")
            symbol = node.get("properties", {}).get("symbol")
            if isinstance(symbol, dict) and "pattern" in symbol:  # a request body's field
                formats.setdefault(symbol["pattern"], set()).add(where)
            for key, value in node.items():
                walk(value, f"{where}/{key}")
        elif isinstance(node, list):
            for value in node:
                walk(value, where)

    walk(document(api), "")
    assert set(formats) == {SYMBOL_PATTERN}, formats
    assert any("(path)" in where for where in formats[SYMBOL_PATTERN])
    assert any("NewPair" in where for where in formats[SYMBOL_PATTERN])
