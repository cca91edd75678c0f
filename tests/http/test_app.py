"""The app factory takes its routes from the caller."""

from __future__ import annotations

import falcon
import falcon.asgi
import falcon.testing
from prometheus_client import CollectorRegistry

from tradeengine.http.app import create_app


def test_routes_may_name_a_responder_suffix() -> None:
    class Orders:
        async def on_get(self, req: falcon.asgi.Request, resp: falcon.asgi.Response) -> None:
            resp.media = {"orders": []}

        async def on_get_item(self, req: falcon.asgi.Request, resp: falcon.asgi.Response,
                              order_id: str) -> None:
            resp.media = {"id": order_id}

    orders = Orders()
    app = create_app(version="1", readiness_checks={}, registry=CollectorRegistry(),
                     routes=[("/orders", orders), ("/orders/{order_id}", orders, "item")])
    client = falcon.testing.TestClient(app)
    assert client.simulate_get("/orders").json == {"orders": []}
    assert client.simulate_get("/orders/42").json == {"id": "42"}
    head = client.simulate_head("/orders/42")  # HEAD follows GET, suffix included
    got = client.simulate_get("/orders/42")
    assert (head.status_code, head.content) == (200, b"")
    assert head.headers["content-length"] == str(len(got.content))

