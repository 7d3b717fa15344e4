"""Drives Interlock with the official `anthropic` Python client (translated to the OpenAI-format mock)."""
import anthropic
import pytest

KEY = "interop-tester-key-000000001"


def client(server, key=KEY):
    return anthropic.Anthropic(base_url=server["base"], api_key=key, max_retries=0)


def test_messages_non_streaming(server):
    message = client(server).messages.create(model="smart", max_tokens=100, system="Be brief.", messages=[{"role": "user", "content": "hello"}])
    assert message.content[0].type == "text"
    assert message.content[0].text == "Mock answer to: hello"
    assert message.stop_reason == "end_turn"
    assert message.usage.output_tokens > 0


def test_messages_streaming_text(server):
    with client(server).messages.stream(model="fast", max_tokens=100, messages=[{"role": "user", "content": "stream this"}]) as stream:
        text = "".join(stream.text_stream)
        final = stream.get_final_message()
    assert text == "Mock answer to: stream this"
    assert final.stop_reason == "end_turn"
    assert final.usage.output_tokens > 0


def test_tool_use_streaming_and_result(server):
    tools = [{"name": "get_weather", "description": "Weather", "input_schema": {"type": "object", "properties": {"city": {"type": "string"}}}}]
    c = client(server)
    with c.messages.stream(model="smart", max_tokens=200, tools=tools, messages=[{"role": "user", "content": "weather in Paris?"}]) as stream:
        final = stream.get_final_message()
    tool_use = [b for b in final.content if b.type == "tool_use"][0]
    assert final.stop_reason == "tool_use"
    assert tool_use.name == "get_weather"
    assert tool_use.input == {"city": "Paris", "unit": "celsius"}
    answer = c.messages.create(
        model="smart", max_tokens=200, tools=tools,
        messages=[
            {"role": "user", "content": "weather in Paris?"},
            {"role": "assistant", "content": [tool_use.model_dump()]},
            {"role": "user", "content": [{"type": "tool_result", "tool_use_id": tool_use.id, "content": "sunny"}]},
        ],
    )
    assert answer.content[0].text == "It is sunny in Paris."


def test_errors_are_anthropic_shaped(server):
    with pytest.raises(anthropic.AuthenticationError):
        client(server, "wrong-key-wrong-key").messages.create(model="fast", max_tokens=10, messages=[{"role": "user", "content": "x"}])
    with pytest.raises(anthropic.PermissionDeniedError) as error:
        client(server, "interop-narrow-key-000000002").messages.create(model="smart", max_tokens=10, messages=[{"role": "user", "content": "x"}])
    assert error.value.body["error"]["type"] == "permission_error"
    with pytest.raises(anthropic.BadRequestError) as error:
        client(server).messages.create(model="fast", max_tokens=0, messages=[{"role": "user", "content": "x"}])
    assert "max_tokens" in error.value.body["error"]["message"]
