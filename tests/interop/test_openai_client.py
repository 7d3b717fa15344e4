"""Drives Interlock with the official `openai` Python client."""
import json
import sqlite3
import time

import openai
import pytest

KEY = "interop-tester-key-000000001"


def client(server, key=KEY):
    return openai.OpenAI(base_url=server["base"] + "/v1", api_key=key, max_retries=0)


def test_chat_completion_with_gateway_headers(server):
    raw = client(server).chat.completions.with_raw_response.create(
        model="fast", messages=[{"role": "user", "content": "hello"}], temperature=0.2, max_tokens=64
    )
    completion = raw.parse()
    assert completion.choices[0].message.content == "Mock answer to: hello"
    assert completion.usage.completion_tokens > 0
    assert raw.headers["x-interlock-deployment"] == "fast/mock/mock-fast"
    assert float(raw.headers["x-interlock-cost-usd"]) > 0
    assert float(raw.headers["x-interlock-overhead-ms"]) >= 0
    assert raw.headers["x-request-id"].startswith("req_")


def test_streaming_with_and_without_usage(server):
    stream = client(server).chat.completions.create(
        model="fast", messages=[{"role": "user", "content": "tell me a story"}], stream=True
    )
    chunks = list(stream)
    text = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
    assert text == "Mock answer to: tell me a story"
    # Interlock asks the upstream for usage; the client did not, so it must not see the usage chunk.
    assert all(c.choices for c in chunks)

    stream = client(server).chat.completions.create(
        model="fast", messages=[{"role": "user", "content": "hi"}], stream=True,
        stream_options={"include_usage": True},
    )
    chunks = list(stream)
    assert chunks[-1].usage is not None and chunks[-1].usage.total_tokens > 0


def test_tool_calls_round_trip(server):
    c = client(server)
    tools = [{"type": "function", "function": {"name": "get_weather", "parameters": {"type": "object", "properties": {"city": {"type": "string"}}}}}]
    first = c.chat.completions.create(model="fast", messages=[{"role": "user", "content": "what is the weather?"}], tools=tools)
    call = first.choices[0].message.tool_calls[0]
    assert first.choices[0].finish_reason == "tool_calls"
    assert call.function.name == "get_weather"
    assert json.loads(call.function.arguments) == {"city": "Paris", "unit": "celsius"}
    second = c.chat.completions.create(
        model="fast", tools=tools,
        messages=[
            {"role": "user", "content": "what is the weather?"},
            {"role": "assistant", "tool_calls": [call.model_dump()]},
            {"role": "tool", "tool_call_id": call.id, "content": "sunny"},
        ],
    )
    assert second.choices[0].message.content == "It is sunny in Paris."


def test_openai_client_served_by_anthropic_format_translation_streams_tools(server):
    # `smart` is a mock too, but the request goes through the OpenAI format end to end here;
    # the Anthropic direction is covered by test_anthropic_client.py.
    stream = client(server).chat.completions.create(
        model="smart", messages=[{"role": "user", "content": "weather please"}], stream=True,
        tools=[{"type": "function", "function": {"name": "get_weather", "parameters": {"type": "object"}}}],
    )
    arguments = ""
    name = None
    for chunk in stream:
        for delta in chunk.choices[0].delta.tool_calls or [] if chunk.choices else []:
            name = delta.function.name or name
            arguments += delta.function.arguments or ""
    assert name == "get_weather"
    assert json.loads(arguments)["city"] == "Paris"


def test_embeddings_and_models(server):
    c = client(server)
    result = c.embeddings.create(model="embed", input=["a", "b"])
    assert len(result.data) == 2 and len(result.data[0].embedding) == 8
    assert sorted(m.id for m in c.models.list()) == ["embed", "fast", "smart"]
    assert [m.id for m in client(server, "interop-narrow-key-000000002").models.list()] == ["fast"]


def test_errors_are_openai_shaped(server):
    with pytest.raises(openai.AuthenticationError) as error:
        client(server, "wrong-key-wrong-key").chat.completions.create(model="fast", messages=[{"role": "user", "content": "x"}])
    assert error.value.code == "invalid_api_key"
    with pytest.raises(openai.PermissionDeniedError) as error:
        client(server, "interop-narrow-key-000000002").chat.completions.create(model="smart", messages=[{"role": "user", "content": "x"}])
    assert error.value.code == "model_not_allowed"
    with pytest.raises(openai.BadRequestError) as error:
        client(server).chat.completions.create(model="fast", messages=[{"role": "user", "content": "x"}], temperature="hot")
    assert error.value.param == "temperature"
    with pytest.raises(openai.NotFoundError) as error:
        client(server).chat.completions.create(model="nope", messages=[{"role": "user", "content": "x"}])


def test_budget_exhaustion(server):
    c = client(server, "interop-thrifty-key-00000003")
    spent_calls = 0
    with pytest.raises(openai.RateLimitError) as error:
        for _ in range(50):
            c.chat.completions.create(model="fast", messages=[{"role": "user", "content": "expensive please"}], max_tokens=1000)
            spent_calls += 1
    assert error.value.code == "budget_exceeded"
    # Each call costs $0.003 and reserves at most that: $0.01 allows three.
    assert spent_calls == 3
    # The ledger received the calls (batched writer, flushed every 50 ms).
    deadline = time.time() + 5
    while time.time() < deadline:
        with sqlite3.connect(server["db"]) as db:
            total = db.execute("SELECT COALESCE(SUM(cost_nanos),0) FROM usage_ledger WHERE agent_id='thrifty' AND outcome='success'").fetchone()[0]
        if total == 9_000_000:
            break
        time.sleep(0.1)
    assert total == 9_000_000
