"""The agent registry over the admin API, with the agents' side played by the real `openai`
and `anthropic` clients: an agent made by an operator, its generated key (rotated, revoked),
disabling, and the registry surviving a restart."""
import anthropic
import httpx
import openai
import pytest

from conftest import start_interlock, stop_interlock

ADMIN = {"authorization": "Bearer interop-admin-token-000000001"}


def admin(server, method, path, body=None):
    return httpx.request(method, server["base"] + "/admin/v1" + path, headers=ADMIN, json=body)


def ask(server, key, text="hello"):
    client = openai.OpenAI(base_url=server["base"] + "/v1", api_key=key, max_retries=0)
    return client.chat.completions.create(model="fast", messages=[{"role": "user", "content": text}])


def test_an_operator_made_agent_uses_its_generated_key_until_it_is_revoked(server):
    created = admin(server, "POST", "/agents", {"id": "interop-scout", "owner": "qa", "grants": {"models": ["fast"]}})
    assert created.status_code == 201, created.text
    issued = admin(server, "POST", "/agents/interop-scout/keys", {"ttl_s": 3600})
    assert issued.status_code == 201, issued.text
    key = issued.json()["key"]
    assert key.startswith(issued.json()["prefix"] + "_")

    assert ask(server, key).choices[0].message.content == "Mock answer to: hello"
    claude = anthropic.Anthropic(base_url=server["base"], api_key=key, max_retries=0)
    message = claude.messages.create(model="fast", max_tokens=50, messages=[{"role": "user", "content": "hi there"}])
    assert message.content[0].text == "Mock answer to: hi there"

    # The listing never shows the key again.
    listing = admin(server, "GET", "/agents/interop-scout/keys")
    assert key not in listing.text and listing.json()["data"][0]["state"] == "active"

    # Not granted: default deny, whatever the credential.
    with pytest.raises(openai.PermissionDeniedError):
        openai.OpenAI(base_url=server["base"] + "/v1", api_key=key, max_retries=0).chat.completions.create(
            model="smart", messages=[{"role": "user", "content": "hi"}])

    # Rotation without overlap: the new key works, the old one is expired at once.
    rotated = admin(server, "POST", f"/agents/interop-scout/keys/{issued.json()['id']}/rotate", {"overlap_s": 0})
    assert rotated.status_code == 201, rotated.text
    new_key = rotated.json()["key"]
    assert ask(server, new_key).choices[0].message.content
    with pytest.raises(openai.AuthenticationError) as expired:
        ask(server, key)
    assert expired.value.code == "api_key_expired"

    revoked = admin(server, "POST", f"/agents/interop-scout/keys/{rotated.json()['id']}/revoke")
    assert revoked.status_code == 200 and revoked.json()["state"] == "revoked"
    with pytest.raises(openai.AuthenticationError) as refused:
        ask(server, new_key)
    assert refused.value.code == "api_key_revoked"


def test_disabling_an_agent_refuses_its_key_and_tokens(server):
    assert admin(server, "POST", "/agents", {"id": "interop-rogue", "grants": {"models": ["fast"]}}).status_code == 201
    key = admin(server, "POST", "/agents/interop-rogue/keys").json()["key"]
    token = httpx.post(server["base"] + "/oauth/token", data={
        "grant_type": "client_credentials", "client_id": "interop-rogue", "client_secret": key}).json()["access_token"]
    assert ask(server, token).choices[0].message.content

    disabled = admin(server, "POST", "/agents/interop-rogue/disable")
    assert disabled.status_code == 200 and disabled.json()["status"] == "disabled"
    for credential in (key, token):
        with pytest.raises(openai.AuthenticationError) as refused:
            ask(server, credential)
        assert refused.value.code == "agent_disabled"


def test_the_registry_survives_a_restart():
    process, base, db = start_interlock("interop.yaml")
    server = {"base": base}
    try:
        assert admin(server, "POST", "/agents", {"id": "interop-durable", "grants": {"models": ["fast"]}}).status_code == 201
        key = admin(server, "POST", "/agents/interop-durable/keys").json()["key"]
    finally:
        assert stop_interlock(process) == 0
    process, base, _ = start_interlock("interop.yaml", db=db)
    try:
        assert ask({"base": base}, key, "still here").choices[0].message.content == "Mock answer to: still here"
        agents = admin({"base": base}, "GET", "/agents").json()["data"]
        assert {"interop-durable", "tester"} <= {agent["id"] for agent in agents}
        assert next(agent for agent in agents if agent["id"] == "tester")["source"] == "config"
    finally:
        assert stop_interlock(process) == 0
