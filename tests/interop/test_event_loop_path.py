"""The event-loop path (non-streamed model calls served on the loop that read them), driven
with the real `openai` and `anthropic` clients and raw pipelined HTTP/1.1, against a real HTTP
upstream started here."""
import json
import os
import signal
import socket
import sqlite3
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import anthropic
import openai
import pytest

from conftest import start_interlock, stop_interlock

KEY = "loop-tester-key-00000000001"
UPSTREAM_KEY = "sk-upstream-secret-000000000001"


class Upstream(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    calls = {}
    authorizations = set()

    def do_POST(self):
        body = json.loads(self.rfile.read(int(self.headers["content-length"])))
        model = body["model"]
        Upstream.calls[model] = Upstream.calls.get(model, 0) + 1
        Upstream.authorizations.add(self.headers.get("authorization"))
        if model in ("flaky", "flaky-stream") and Upstream.calls[model] == 1:
            self.answer(500, {"error": {"message": "try again"}})
            return
        if model.startswith("endless"):
            self.endless(model)
            return
        if body.get("stream"):
            self.stream(model, "echo: " + body["messages"][-1]["content"])
            return
        text = "echo: " + body["messages"][-1]["content"]
        self.answer(200, {
            "id": "chatcmpl-up", "object": "chat.completion", "created": 1, "model": model,
            "choices": [{"index": 0, "message": {"role": "assistant", "content": text}, "finish_reason": "stop"}],
            "usage": {"prompt_tokens": 7, "completion_tokens": 3, "total_tokens": 10},
        })

    def stream(self, model, text):
        self.send_response(200)
        self.send_header("content-type", "text/event-stream")
        self.send_header("transfer-encoding", "chunked")
        self.end_headers()
        def event(payload):
            data = f"data: {json.dumps(payload)}\n\n".encode()
            self.wfile.write(f"{len(data):x}\r\n".encode() + data + b"\r\n")
            self.wfile.flush()
        chunk = {"id": "chatcmpl-up", "object": "chat.completion.chunk", "created": 1, "model": model}
        for word in text.split(" "):
            event(dict(chunk, choices=[{"index": 0, "delta": {"content": word + " "}, "finish_reason": None}]))
            time.sleep(0.01)
        event(dict(chunk, choices=[{"index": 0, "delta": {}, "finish_reason": "stop"}]))
        event(dict(chunk, choices=[], usage={"prompt_tokens": 7, "completion_tokens": 3, "total_tokens": 10}))
        done = b"data: [DONE]\n\n"
        self.wfile.write(f"{len(done):x}\r\n".encode() + done + b"\r\n0\r\n\r\n")
        self.wfile.flush()

    cut = {}

    def endless(self, model):
        """A stream whose event never ends (after two good ones for `endless-later`): it
        writes until Interlock closes the connection, and notes that it did."""
        self.send_response(200)
        self.send_header("content-type", "text/event-stream")
        self.send_header("transfer-encoding", "chunked")
        self.end_headers()
        def chunk(data):
            self.wfile.write(f"{len(data):x}\r\n".encode() + data + b"\r\n")
            self.wfile.flush()
        try:
            if model == "endless-later":
                base = {"id": "chatcmpl-up", "object": "chat.completion.chunk", "created": 1, "model": model}
                for word in ("one", "two"):
                    chunk(f"data: {json.dumps(dict(base, choices=[{'index': 0, 'delta': {'content': word + ' '}}]))}\n\n".encode())
            chunk(b"data: ")
            deadline = time.time() + 10
            while time.time() < deadline:
                chunk(b"x" * 1024)
                time.sleep(0.005)
        except OSError:
            Upstream.cut[model] = Upstream.cut.get(model, 0) + 1

    def answer(self, status, payload):
        data = json.dumps(payload).encode()
        self.send_response(status)
        self.send_header("content-type", "application/json")
        self.send_header("content-length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)

    def log_message(self, *args):
        pass


@pytest.fixture(scope="module")
def loop_server():
    upstream = ThreadingHTTPServer(("127.0.0.1", 0), Upstream)
    threading.Thread(target=upstream.serve_forever, daemon=True).start()
    url = f"http://127.0.0.1:{upstream.server_address[1]}"
    process, base, db = start_interlock("event_loop.yaml", env={"UPSTREAM_URL": url, "UPSTREAM_KEY": UPSTREAM_KEY})
    yield {"base": base, "db": db, "pid": process.pid}
    assert stop_interlock(process) == 0, process.stderr.read()
    upstream.shutdown()


def ledger_row(db, request_id):
    for _ in range(100):
        with sqlite3.connect(db) as connection:
            row = connection.execute(
                "select status, attempts, input_tokens, output_tokens, cost_nanos, outcome from usage_ledger where request_id = ?", (request_id,)
            ).fetchone()
        if row:
            return row
        time.sleep(0.05)
    raise AssertionError(f"no usage row for {request_id}")


def test_the_server_runs_the_configured_number_of_event_loops(loop_server):
    # server.event_loop_threads: 3 in event_loop.yaml; NIO names its loop threads NIO-SGLTN-<group>-#<n>.
    names = []
    for task in os.listdir(f"/proc/{loop_server['pid']}/task"):
        with open(f"/proc/{loop_server['pid']}/task/{task}/comm") as comm:
            names.append(comm.read().strip())
    loops = [name for name in names if name.startswith("NIO-SGLTN-") and "TP" not in name]
    assert len(loops) == 3, names


def test_openai_chat_is_served_on_the_event_loop_and_billed(loop_server):
    client = openai.OpenAI(base_url=loop_server["base"] + "/v1", api_key=KEY, max_retries=0)
    raw = client.chat.completions.with_raw_response.create(model="plain", messages=[{"role": "user", "content": "hello"}])
    completion = raw.parse()
    assert completion.choices[0].message.content == "echo: hello"
    assert raw.headers["x-interlock-path"] == "event-loop"
    assert raw.headers["x-interlock-attempts"] == "1"
    # 7 input tokens at $1/Mtok and 3 output at $2/Mtok.
    assert raw.headers["x-interlock-cost-usd"] == "0.000013"
    status, attempts, input_tokens, output_tokens, cost_nanos, outcome = ledger_row(loop_server["db"], raw.headers["x-request-id"])
    assert (status, attempts, input_tokens, output_tokens, cost_nanos, outcome) == (200, 1, 7, 3, 13_000, "success")
    # The upstream saw Interlock's credential, never the agent's.
    assert f"Bearer {UPSTREAM_KEY}" in Upstream.authorizations
    assert not any(KEY in (value or "") for value in Upstream.authorizations)


def test_a_failed_first_attempt_is_retried_on_the_async_path(loop_server):
    client = openai.OpenAI(base_url=loop_server["base"] + "/v1", api_key=KEY, max_retries=0)
    raw = client.chat.completions.with_raw_response.create(model="flaky", messages=[{"role": "user", "content": "again"}])
    assert raw.parse().choices[0].message.content == "echo: again"
    assert raw.headers["x-interlock-path"] == "event-loop,async"
    assert raw.headers["x-interlock-attempts"] == "2"
    assert Upstream.calls["flaky"] == 2


def test_openai_stream_is_relayed_on_the_event_loop_and_billed(loop_server):
    client = openai.OpenAI(base_url=loop_server["base"] + "/v1", api_key=KEY, max_retries=0)
    with client.chat.completions.with_streaming_response.create(
        model="plain", messages=[{"role": "user", "content": "stream me please"}], stream=True
    ) as response:
        assert response.headers["x-interlock-path"] == "event-loop"
        request_id = response.headers["x-request-id"]
        text = "".join(chunk.choices[0].delta.content or "" for chunk in response.parse() if chunk.choices)
    assert text == "echo: stream me please "
    status, attempts, input_tokens, output_tokens, cost_nanos, outcome = ledger_row(loop_server["db"], request_id)
    assert (status, attempts, input_tokens, output_tokens, cost_nanos, outcome) == (200, 1, 7, 3, 13_000, "success")


def test_a_stream_whose_first_attempt_fails_is_retried_on_the_async_path(loop_server):
    client = openai.OpenAI(base_url=loop_server["base"] + "/v1", api_key=KEY, max_retries=0)
    with client.chat.completions.with_streaming_response.create(
        model="flaky-stream", messages=[{"role": "user", "content": "second try"}], stream=True
    ) as response:
        assert response.headers["x-interlock-path"] == "event-loop,async"
        assert response.headers["x-interlock-attempts"] == "2"
        text = "".join(chunk.choices[0].delta.content or "" for chunk in response.parse() if chunk.choices)
    assert text == "echo: second try "
    assert Upstream.calls["flaky-stream"] == 2


def test_a_stream_event_past_its_bound_ends_the_stream_and_is_billed_as_partial(loop_server):
    # gateway.max_stream_event_bytes: 4096; after two events the upstream sends one that never ends.
    client = openai.OpenAI(base_url=loop_server["base"] + "/v1", api_key=KEY, max_retries=0)
    text = ""
    with client.chat.completions.with_streaming_response.create(
        model="endless-later", messages=[{"role": "user", "content": "go"}], stream=True
    ) as response:
        assert response.headers["x-interlock-path"] == "event-loop"
        request_id = response.headers["x-request-id"]
        with pytest.raises(openai.APIError) as stopped:
            for chunk in response.parse():
                text += "".join(choice.delta.content or "" for choice in chunk.choices)
    assert text == "one two "
    assert "more than 4096 bytes" in stopped.value.message
    status, attempts, input_tokens, output_tokens, cost_nanos, outcome = ledger_row(loop_server["db"], request_id)
    # Billed for what was delivered: the prompt estimate and one token per delivered fragment.
    assert (status, outcome, output_tokens) == (200, "partial", 2)
    with sqlite3.connect(loop_server["db"]) as connection:
        assert connection.execute("select error_code from usage_ledger where request_id = ?", (request_id,)).fetchone() == ("upstream_event_too_large",)
    # Interlock closed the upstream instead of reading on.
    for _ in range(100):
        if Upstream.cut.get("endless-later"):
            break
        time.sleep(0.05)
    assert Upstream.cut.get("endless-later") == 1


def test_a_first_stream_event_past_its_bound_is_retried_then_refused(loop_server):
    client = openai.OpenAI(base_url=loop_server["base"] + "/v1", api_key=KEY, max_retries=0)
    started = time.time()
    with pytest.raises(openai.APIStatusError) as refused:
        client.chat.completions.create(model="endless-first", messages=[{"role": "user", "content": "go"}], stream=True)
    # Nothing reached the agent, so both attempts (the loop's and the async path's) were made,
    # each cut off at the bound rather than after the upstream's ten seconds.
    assert refused.value.status_code == 502
    assert "max_stream_event_bytes" in refused.value.message
    assert Upstream.calls["endless-first"] == 2
    assert time.time() - started < 5
    for _ in range(100):
        if Upstream.cut.get("endless-first") == 2:
            break
        time.sleep(0.05)
    assert Upstream.cut.get("endless-first") == 2


def test_anthropic_client_is_translated_on_the_event_loop(loop_server):
    client = anthropic.Anthropic(base_url=loop_server["base"], api_key=KEY, max_retries=0)
    raw = client.messages.with_raw_response.create(model="plain", max_tokens=50, messages=[{"role": "user", "content": "bonjour"}])
    message = raw.parse()
    assert message.content[0].text == "echo: bonjour"
    assert message.usage.input_tokens == 7 and message.usage.output_tokens == 3
    assert raw.headers["x-interlock-path"] == "event-loop"


def test_budget_refusal_on_the_event_loop_is_an_openai_error(loop_server):
    client = openai.OpenAI(base_url=loop_server["base"] + "/v1", api_key="broke-agent-key-00000000001", max_retries=0)
    with pytest.raises(openai.RateLimitError) as refused:
        client.chat.completions.create(model="plain", messages=[{"role": "user", "content": "hi"}])
    assert refused.value.body["code"] == "budget_exceeded"
    assert refused.value.response.headers.get("retry-after")


def raw_chat(text, version=b"1.1"):
    body = json.dumps({"model": "plain", "messages": [{"role": "user", "content": text}]}).encode()
    return (b"POST /v1/chat/completions HTTP/" + version + b"\r\nHost: x\r\nAuthorization: Bearer " + KEY.encode()
            + b"\r\nContent-Type: application/json\r\nContent-Length: " + str(len(body)).encode() + b"\r\n\r\n" + body)


def read_until(connection, done, seconds=10):
    connection.settimeout(0.2)
    data, deadline = b"", time.time() + seconds
    while time.time() < deadline and not done(data):
        try:
            chunk = connection.recv(65536)
        except socket.timeout:
            continue
        if not chunk:
            break
        data += chunk
    return data


def test_pipelined_requests_are_answered_in_order(loop_server):
    host, port = loop_server["base"].removeprefix("http://").split(":")
    chat = raw_chat
    health = b"GET /healthz HTTP/1.1\r\nHost: x\r\n\r\n"
    models = b"GET /v1/models HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer " + KEY.encode() + b"\r\n\r\n"
    with socket.create_connection((host, int(port))) as connection:
        connection.sendall(chat("one") + health + chat("two") + models + chat("three") + chat("four") + health)
        data = read_until(connection, lambda data: data.count(b"HTTP/1.1 ") >= 7 and data.rstrip().endswith(b"}"))
    bodies = [part.split(b"\r\n\r\n", 1)[1] for part in data.split(b"HTTP/1.1 ")[1:]]
    assert len(bodies) == 7
    order = []
    for body in bodies:
        payload = json.loads(body)
        if "choices" in payload:
            order.append(payload["choices"][0]["message"]["content"])
        elif payload.get("object") == "list":
            order.append("models")
        else:
            order.append(payload["status"])
    assert order == ["echo: one", "ok", "echo: two", "models", "echo: three", "echo: four", "ok"]


def test_loop_answers_are_framed_for_http_1_0_and_head_answers_have_no_body(loop_server):
    host, port = loop_server["base"].removeprefix("http://").split(":")
    # HTTP/1.0 without keep-alive: the loop's answer says so, and the connection ends after it.
    with socket.create_connection((host, int(port))) as connection:
        connection.sendall(raw_chat("old", version=b"1.0"))
        data = read_until(connection, lambda data: False)
    head, payload = data.split(b"\r\n\r\n", 1)
    lines = head.split(b"\r\n")
    assert lines[0] == b"HTTP/1.0 200 OK"
    headers = {name.lower(): value for name, value in (line.split(b": ", 1) for line in lines[1:])}
    assert headers[b"connection"] == b"close"
    assert headers[b"x-interlock-path"] == b"event-loop"
    assert int(headers[b"content-length"]) == len(payload)
    assert json.loads(payload)["choices"][0]["message"]["content"] == "echo: old"
    # Answers to HEAD carry no body, so the next answer on the connection follows the head.
    with socket.create_connection((host, int(port))) as connection:
        connection.sendall(b"HEAD /healthz HTTP/1.1\r\nHost: x\r\n\r\nHEAD /nope HTTP/1.1\r\nHost: x\r\n\r\n" + raw_chat("after head"))
        data = read_until(connection, lambda data: data.count(b"HTTP/1.1 ") >= 3 and data.rstrip().endswith(b"}"))
    answers = data.split(b"HTTP/1.1 ")[1:]
    assert len(answers) == 3
    assert answers[0].endswith(b"\r\n\r\n") and answers[1].endswith(b"\r\n\r\n")
    assert json.loads(answers[2].split(b"\r\n\r\n", 1)[1])["choices"][0]["message"]["content"] == "echo: after head"


def test_connections_that_never_reached_the_router_close_on_sigterm():
    """A connection whose requests were all served on the loop never gets the router's
    handlers (they are added with its first router request); on SIGTERM the loop handler
    itself closes it when idle, and one that sent nothing, so shutdown does not wait for
    the clients to hang up."""
    upstream = ThreadingHTTPServer(("127.0.0.1", 0), Upstream)
    threading.Thread(target=upstream.serve_forever, daemon=True).start()
    url = f"http://127.0.0.1:{upstream.server_address[1]}"
    process, base, _ = start_interlock("event_loop.yaml", env={"UPSTREAM_URL": url, "UPSTREAM_KEY": UPSTREAM_KEY})
    try:
        host, port = base.removeprefix("http://").split(":")
        served = socket.create_connection((host, int(port)))
        served.sendall(raw_chat("only the loop"))
        data = read_until(served, lambda data: data.rstrip().endswith(b"}"))
        assert b"x-interlock-path: event-loop" in data
        silent = socket.create_connection((host, int(port)))
        time.sleep(0.2)
        signalled = time.time()
        process.send_signal(signal.SIGTERM)
        for connection in (served, silent):
            assert read_until(connection, lambda data: False, seconds=5) == b""
            assert time.time() - signalled < 5, "the idle connection was not closed"
        assert process.wait(timeout=30) == 0
    finally:
        if process.poll() is None:
            process.kill()
        upstream.shutdown()
