"""The tool gateway driven by the official MCP Python SDK (`mcp`) as a client of /mcp, and
over plain HTTP for the JSON-RPC error cases. The upstream is a REST API described by
OpenAPI, served here; Interlock holds its credential, agents never see it."""
import json
import os
import tempfile
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import anyio
import httpx
import pytest
from mcp import ClientSession
from mcp.client.streamable_http import streamable_http_client
from mcp.shared._httpx_utils import create_mcp_http_client

from conftest import start_interlock, stop_interlock

SPEC = """
openapi: 3.0.3
info: { title: Weather, version: "1" }
paths:
  /forecast/{city}:
    get:
      operationId: getForecast
      summary: The forecast for a city.
      parameters:
        - { name: city, in: path, required: true, schema: { type: string } }
        - { name: days, in: query, schema: { type: integer, minimum: 1, maximum: 14 } }
      responses: { "200": { description: ok } }
  /alerts:
    post:
      operationId: createAlert
      requestBody:
        required: true
        content: { application/json: { schema: { type: object, properties: { city: { type: string } }, required: [city] } } }
      responses: { "201": { description: created } }
"""


class Weather(BaseHTTPRequestHandler):
    seen = []

    def do_GET(self):
        Weather.seen.append((self.path, self.headers.get("authorization"), self.headers.get("idempotency-key")))
        if self.headers.get("authorization") != "Bearer weather-upstream-secret-0001":
            self.send_response(401)
            self.end_headers()
            return
        city = self.path.split("/")[2].split("?")[0]
        body = json.dumps({"city": city, "high": 21}).encode()
        self.send_response(200)
        self.send_header("content-type", "application/json")
        self.send_header("content-length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, *args):
        pass


def weather_gateway(handler, config):
    """Serves `handler` as the weather API (its OpenAPI document written to a temporary file)
    and Interlock with `config` in front of it; yields Interlock's base URL, then stops both."""
    upstream = ThreadingHTTPServer(("127.0.0.1", 0), handler)
    threading.Thread(target=upstream.serve_forever, daemon=True).start()
    spec = os.path.join(tempfile.mkdtemp(prefix="interlock-tools-"), "weather.yaml")
    with open(spec, "w") as handle:
        handle.write(SPEC)
    env = {"WEATHER_SPEC": spec, "WEATHER_URL": f"http://127.0.0.1:{upstream.server_address[1]}"}
    process, base, _ = start_interlock(config, env=env)
    yield base
    assert stop_interlock(process) == 0, process.stderr.read()
    upstream.shutdown()


@pytest.fixture(scope="module")
def gateway():
    yield from weather_gateway(Weather, "tools.yaml")


async def with_session(base, key, body):
    async with create_mcp_http_client(headers={"authorization": f"Bearer {key}"}) as http:
        async with streamable_http_client(base + "/mcp", http_client=http) as (read, write, *_):
            async with ClientSession(read, write) as session:
                await session.initialize()
                return await body(session)


def test_mcp_client_lists_only_granted_tools_and_calls_them(gateway):
    async def forecaster(session):
        tools = await session.list_tools()
        assert [tool.name for tool in tools.tools] == ["weather.getForecast"]
        assert tools.tools[0].annotations.read_only_hint is True
        result = await session.call_tool("weather.getForecast", {"city": "Oslo", "days": 2})
        assert result.is_error is False
        assert json.loads(result.content[0].text) == {"city": "Oslo", "high": 21}
        assert result.structured_content == {"city": "Oslo", "high": 21}
        # Invalid arguments never reach the upstream; the error names what to fix.
        before = len(Weather.seen)
        with pytest.raises(Exception) as refused:
            await session.call_tool("weather.getForecast", {"town": "Oslo"})
        assert "'city' is required" in str(refused.value)
        assert len(Weather.seen) == before
        # Another agent's tool does not exist for this one.
        with pytest.raises(Exception) as unknown:
            await session.call_tool("weather.createAlert", {"city": "Oslo"})
        assert "Unknown tool" in str(unknown.value)
        return True

    assert anyio.run(with_session, gateway, "interop-forecaster-key-00001", forecaster)
    # Interlock injected the upstream credential; the agent never had it.
    assert Weather.seen[0][1] == "Bearer weather-upstream-secret-0001"
    assert Weather.seen[0][2]  # an idempotency key was sent

    async def alerter(session):
        return [tool.name for tool in (await session.list_tools()).tools]

    assert anyio.run(with_session, gateway, "interop-alerter-key-000000001", alerter) == ["weather.createAlert"]


def test_json_rpc_errors_over_plain_http(gateway):
    headers = {"authorization": "Bearer interop-forecaster-key-00001", "accept": "application/json, text/event-stream",
               "content-type": "application/json"}
    url = gateway + "/mcp"
    assert httpx.post(url, content=b"{not json", headers=headers).json()["error"]["code"] == -32700
    batch = httpx.post(url, json=[{"jsonrpc": "2.0", "id": 1, "method": "ping"}], headers=headers)
    assert batch.status_code == 400 and batch.json()["error"]["code"] == -32600
    init = httpx.post(url, json={"jsonrpc": "2.0", "id": 1, "method": "initialize",
                                  "params": {"protocolVersion": "2025-06-18", "capabilities": {}, "clientInfo": {"name": "t", "version": "1"}}},
                      headers=headers)
    assert init.json()["result"]["protocolVersion"] == "2025-06-18"
    session = init.headers["mcp-session-id"]
    with_session = dict(headers, **{"mcp-session-id": session, "mcp-protocol-version": "2025-06-18"})
    assert httpx.post(url, json={"jsonrpc": "2.0", "id": 2, "method": "resources/list"}, headers=with_session).json()["error"]["code"] == -32601
    assert httpx.post(url, json={"jsonrpc": "2.0", "method": "notifications/initialized"}, headers=with_session).status_code == 202
    assert httpx.post(url, json={"jsonrpc": "2.0", "id": 3, "method": "ping"}, headers=dict(headers, **{"mcp-session-id": "nope"})).status_code == 404
    bad_version = httpx.post(url, json={"jsonrpc": "2.0", "id": 4, "method": "ping"}, headers=dict(with_session, **{"mcp-protocol-version": "1999-01-01"}))
    assert bad_version.status_code == 400
    invalid = httpx.post(url, json={"jsonrpc": "2.0", "id": 5, "method": "tools/call", "params": {"name": "weather.getForecast", "arguments": {"city": 5}}},
                         headers=with_session).json()
    assert invalid["error"]["code"] == -32602 and "'city' must be a string" in invalid["error"]["message"]
    assert httpx.post(url, json={"jsonrpc": "2.0", "id": 6, "method": "ping"}).status_code == 401
    oversized = httpx.post(url, content=b'{"jsonrpc":"2.0","id":8,"method":"ping","params":{"pad":"' + b"x" * (5 * 1024 * 1024) + b'"}}', headers=with_session)
    assert oversized.status_code == 413 and oversized.json()["error"]["code"] == -32600
    assert httpx.delete(url, headers=with_session).status_code == 204
    assert httpx.post(url, json={"jsonrpc": "2.0", "id": 7, "method": "ping"}, headers=with_session).status_code == 404
