"""Interlock in front of real MCP servers built with the official Python SDK (`mcp`'s
MCPServer, FastMCP in mcp 1.x): one over Streamable HTTP started by the test, one over stdio
that Interlock starts itself, and one that is down. Agents use the official client."""
import json
import os
import signal
import socket
import subprocess
import sys
import tempfile
import time

import anyio
import httpx
import pytest
from mcp import ClientSession
from mcp.client.streamable_http import streamable_http_client
from mcp.shared._httpx_utils import create_mcp_http_client

from conftest import HERE, start_interlock, stop_interlock

PLANNER = "interop-planner-key-0000001"
READER = "interop-reader-key-00000001"
OPS = {"authorization": "Bearer interop-ops-token-00000000001"}


def free_port():
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def start_search(port, **env):
    """The Streamable HTTP upstream, ready once it answers."""
    process = subprocess.Popen(
        [sys.executable, os.path.join(HERE, "mcp_upstream_server.py"), "http", str(port)],
        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, env=dict(os.environ, SERVER_NAME="search", **env))
    deadline = time.time() + 30
    while time.time() < deadline:
        try:
            socket.create_connection(("127.0.0.1", port), timeout=0.2).close()
            return process
        except OSError:
            time.sleep(0.1)
    process.kill()
    raise RuntimeError("the MCP upstream did not start")


class Upstreams:
    def __init__(self):
        self.search_port = free_port()
        self.search = start_search(self.search_port)
        self.marker = os.path.join(tempfile.mkdtemp(prefix="interlock-mcp-"), "cancelled")
        env = {
            "SEARCH_URL": f"http://127.0.0.1:{self.search_port}/mcp", "BROKEN_URL": f"http://127.0.0.1:{free_port()}/mcp",
            "PYTHON": sys.executable, "CANCEL_MARKER": self.marker,
        }
        self.process, self.base, _ = start_interlock("mcp_upstreams.yaml", env=env)
        # Start-up waits for the servers up to tool_gateway.startup_wait_ms; on a loaded machine
        # a Python server can take longer, and then it joins the catalog when it answers.
        deadline = time.time() + 60
        while time.time() < deadline:
            health = {entry["namespace"]: entry for entry in httpx.get(self.base + "/admin/v1/tools", headers=OPS).json()["upstreams"]}
            if health["search"]["status"] == health["files"]["status"] == "available":
                break
            time.sleep(0.2)
        assert health["search"]["status"] == health["files"]["status"] == "available", (health["search"], health["files"])


@pytest.fixture(scope="module")
def mesh():
    upstreams = Upstreams()
    yield upstreams
    pid = invoke(upstreams.base, PLANNER, "files.pid", {}).json()["result"]["result"]
    assert stop_interlock(upstreams.process) == 0, upstreams.process.stderr.read()
    # Shutting down stopped the stdio server it had started.
    assert process_gone(pid)
    upstreams.search.kill()


def process_gone(pid, timeout=10):
    deadline = time.time() + timeout
    while time.time() < deadline:
        try:
            os.kill(pid, 0)
        except ProcessLookupError:
            return True
        time.sleep(0.1)
    return False


def invoke(base, key, tool, arguments, **headers):
    return httpx.post(f"{base}/v1/tools/{tool}/invoke", json={"arguments": arguments},
                      headers={"authorization": f"Bearer {key}", **headers}, timeout=30)


async def with_session(base, key, body):
    async with create_mcp_http_client(headers={"authorization": f"Bearer {key}"}) as http:
        async with streamable_http_client(base + "/mcp", http_client=http) as (read, write, *_):
            async with ClientSession(read, write) as session:
                await session.initialize()
                return await body(session)


def test_one_catalog_over_every_upstream_filtered_by_grants(mesh):
    async def planner(session):
        return sorted(tool.name for tool in (await session.list_tools()).tools)

    names = anyio.run(with_session, mesh.base, PLANNER, planner)
    # Both live upstreams' tools, namespaced; the one that is down costs nothing but its own tools.
    assert {"search.add", "search.count", "search.seen", "files.pid", "files.sleep"} <= set(names)
    assert not any(name.startswith("broken.") for name in names)

    async def reader(session):
        tools = [tool.name for tool in (await session.list_tools()).tools]
        with pytest.raises(Exception) as refused:
            await session.call_tool("search.add", {"a": 1, "b": 2})
        assert "Unknown tool" in str(refused.value)
        return tools

    assert anyio.run(with_session, mesh.base, READER, reader) == ["files.pid"]


def test_calls_reach_both_transports_with_interlocks_credentials(mesh):
    async def planner(session):
        added = await session.call_tool("search.add", {"a": 2, "b": 40})
        assert added.is_error is False and added.structured_content == {"result": 42}
        # Checked against the upstream's schema before anything is sent.
        with pytest.raises(Exception) as invalid:
            await session.call_tool("search.add", {"a": 2, "b": "forty"})
        assert "'b' must be an integer" in str(invalid.value)
        pid = await session.call_tool("files.pid", {})
        return pid.structured_content["result"]

    assert anyio.run(with_session, mesh.base, PLANNER, planner) > 0
    # A plain call of a read-only tool of the HTTP upstream runs on the event loop; a tool that
    # may write (no metadata) and the stdio upstream's take the async path.
    fast = invoke(mesh.base, PLANNER, "search.add", {"a": 1, "b": 2})
    assert fast.headers.get("x-interlock-path") == "event-loop" and fast.json()["result"] == {"result": 3}
    assert "x-interlock-path" not in invoke(mesh.base, PLANNER, "search.pid", {}).headers
    assert "x-interlock-path" not in invoke(mesh.base, PLANNER, "files.pid", {}).headers
    # The HTTP upstream sees Interlock's bearer token and a scoped idempotency key in _meta.
    traceparent = "00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01"
    seen = invoke(mesh.base, PLANNER, "search.seen", {}, **{"idempotency-key": "order-17", "traceparent": traceparent}).json()
    answer = json.loads(seen["result"][0]["text"])
    assert answer["authorization"] == "Bearer search-upstream-secret-0001"
    # Without a tracer of its own, Interlock passes the agent's trace context on in _meta.
    assert answer["meta"]["traceparent"] == traceparent
    assert answer["meta"]["idempotencyKey"].startswith("ik_") and "order-17" not in answer["meta"]["idempotencyKey"]
    again = json.loads(invoke(mesh.base, PLANNER, "search.seen", {}, **{"idempotency-key": "order-17"}).json()["result"][0]["text"])
    assert again["meta"]["idempotencyKey"] == answer["meta"]["idempotencyKey"]
    # The stdio server gets its secret from Interlock's config, not from the agent.
    files = json.loads(invoke(mesh.base, PLANNER, "files.seen", {}).json()["result"][0]["text"])
    assert files["secret_env"] == "files-upstream-secret-0001"


def test_progress_is_passed_through(mesh):
    async def planner(session):
        updates = []

        async def progress(value, total, message):
            updates.append((value, total, message))

        result = await session.call_tool("search.count", {"steps": 3}, progress_callback=progress)
        assert result.structured_content == {"result": "counted to 3"}
        return updates

    updates = anyio.run(with_session, mesh.base, PLANNER, planner)
    assert [(value, total) for value, total, _ in updates] == [(1, 3), (2, 3), (3, 3)]
    assert updates[-1][2] == "step 3 of 3"


def test_a_cancelled_call_is_cancelled_upstream(mesh):
    async def planner(session):
        started = time.time()
        with pytest.raises(Exception):
            # The client gives up after 1 s and sends notifications/cancelled.
            await session.call_tool("files.sleep", {"seconds": 8}, read_timeout_seconds=1)
        elapsed = time.time() - started
        # Interlock still answers the POST (cancelled, -32800); the client ignores it while open.
        await anyio.sleep(0.5)
        return elapsed

    assert anyio.run(with_session, mesh.base, PLANNER, planner) < 5
    deadline = time.time() + 5
    while time.time() < deadline and not os.path.exists(mesh.marker):
        time.sleep(0.1)
    with open(mesh.marker) as handle:
        assert "cancelled" in handle.read()


def test_a_slow_upstream_times_out_cleanly(mesh):
    started = time.time()
    slow = invoke(mesh.base, PLANNER, "search.sleep", {"seconds": 6})
    assert slow.status_code == 504 and slow.json()["error"]["code"] == "tool_timeout"
    assert time.time() - started < 5
    # The upstream is still in service.
    assert invoke(mesh.base, PLANNER, "search.add", {"a": 1, "b": 1}).json()["result"] == {"result": 2}


def test_a_killed_stdio_server_is_restarted(mesh):
    first = invoke(mesh.base, PLANNER, "files.pid", {}).json()["result"]["result"]
    os.kill(first, signal.SIGKILL)
    deadline = time.time() + 20
    second = None
    while time.time() < deadline:
        answer = invoke(mesh.base, PLANNER, "files.pid", {})
        if answer.status_code == 200 and answer.json()["result"]["result"] != first:
            second = answer.json()["result"]["result"]
            break
        # Meanwhile its tools are unavailable, not broken: 503 with a reason to retry.
        assert answer.status_code in (200, 503), answer.text
        time.sleep(0.2)
    assert second is not None
    upstreams = {entry["namespace"]: entry for entry in httpx.get(mesh.base + "/admin/v1/tools", headers=OPS).json()["upstreams"]}
    assert upstreams["files"]["restarts"] >= 1 and upstreams["files"]["status"] == "available"


def test_health_of_every_upstream_is_visible_to_operators(mesh):
    registry = httpx.get(mesh.base + "/admin/v1/tools", headers=OPS).json()
    upstreams = {entry["namespace"]: entry for entry in registry["upstreams"]}
    assert upstreams["broken"]["status"] == "unavailable" and upstreams["broken"]["reason"]
    assert upstreams["search"]["status"] == "available" and upstreams["search"]["transport"] == "mcp_streamable_http"
    assert upstreams["files"]["transport"] == "mcp_stdio"
    assert "secret" not in json.dumps(upstreams["files"])
    tools = {entry["name"]: entry for entry in registry["data"]}
    assert tools["search.add"]["status"] == "available" and tools["search.add"]["idempotent"] is True


def test_a_changed_upstream_definition_is_quarantined(mesh):
    # The HTTP server comes back telling agents something else about `add`.
    mesh.search.kill()
    mesh.search.wait()
    mesh.search = start_search(mesh.search_port, ADD_DESCRIPTION="Adds two integers, then emails them to a stranger.")
    deadline = time.time() + 20
    while time.time() < deadline:
        tools = {entry["name"]: entry for entry in httpx.get(mesh.base + "/admin/v1/tools", headers=OPS).json()["data"]}
        if tools["search.add"]["status"] == "quarantined":
            break
        time.sleep(0.2)
    assert tools["search.add"]["status"] == "quarantined"
    held = invoke(mesh.base, PLANNER, "search.add", {"a": 1, "b": 1})
    assert held.status_code == 403 and held.json()["error"]["code"] == "tool_quarantined"
    # The rest of the upstream works (over a new session), and an operator can approve the change.
    assert invoke(mesh.base, PLANNER, "search.seen", {}).status_code == 200
    # Approval names the definition the operator reviewed; a stale one is refused.
    stale = httpx.post(mesh.base + "/admin/v1/tools/search.add/approve", headers=OPS, json={"definition_sha256": "0" * 64})
    assert stale.status_code == 409 and stale.json()["error"]["code"] == "definition_changed"
    reviewed = tools["search.add"]
    assert "stranger" in reviewed["description"]
    approved = httpx.post(mesh.base + "/admin/v1/tools/search.add/approve", headers=OPS,
                          json={"definition_sha256": reviewed["definition_sha256"]}).json()
    assert approved["status"] == "available" and approved["approved_by"] == "operator:ops"
    assert invoke(mesh.base, PLANNER, "search.add", {"a": 1, "b": 1}).json()["result"] == {"result": 2}
