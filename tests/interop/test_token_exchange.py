"""RFC 8693 token exchange driven over plain HTTP exactly as the RFC describes it: a user's
token from an identity provider (RS256, signed here with `cryptography` + `pyjwt`), an
agent's token from the client-credentials grant, the delegated token checked with `pyjwt`
against Interlock's JWKS and then used by the `openai` client."""
import json
import os
import tempfile
import time

import httpx
import jwt
import openai
import pytest
from cryptography.hazmat.primitives.asymmetric import rsa
from jwt.algorithms import RSAAlgorithm

from conftest import start_interlock, stop_interlock

EXCHANGE = "urn:ietf:params:oauth:grant-type:token-exchange"
ACCESS_TOKEN = "urn:ietf:params:oauth:token-type:access_token"
IDP = "https://idp.example.com"


@pytest.fixture(scope="module")
def idp_key():
    return rsa.generate_private_key(public_exponent=65537, key_size=2048)


@pytest.fixture(scope="module")
def exchange_server(idp_key):
    jwk = json.loads(RSAAlgorithm.to_jwk(idp_key.public_key()))
    jwk.update({"kid": "idp-1", "alg": "RS256", "use": "sig"})
    path = os.path.join(tempfile.mkdtemp(prefix="interlock-idp-"), "jwks.json")
    with open(path, "w") as handle:
        json.dump({"keys": [jwk]}, handle)
    process, base, _ = start_interlock("exchange.yaml", env={"INTERLOCK_IDP_JWKS": path})
    yield base
    assert stop_interlock(process) == 0, process.stderr.read()


def user_token(idp_key, email, **claims):
    now = int(time.time())
    payload = {"iss": IDP, "aud": "interlock", "sub": "u-" + email, "email": email, "iat": now, "exp": now + 600, **claims}
    return jwt.encode(payload, idp_key, algorithm="RS256", headers={"kid": "idp-1"})


def agent_token(base, agent, key):
    response = httpx.post(base + "/oauth/token", data={"grant_type": "client_credentials", "client_id": agent, "client_secret": key})
    assert response.status_code == 200, response.text
    return response.json()["access_token"]


def exchange(base, subject, actor, **extra):
    form = {"grant_type": EXCHANGE, "subject_token": subject, "subject_token_type": ACCESS_TOKEN,
            "actor_token": actor, "actor_token_type": ACCESS_TOKEN, **extra}
    return httpx.post(base + "/oauth/token", data=form)


def interlock_claims(base, token, audience="interlock"):
    jwks = jwt.PyJWKClient(base + "/.well-known/jwks.json")
    return jwt.decode(token, jwks.get_signing_key_from_jwt(token).key, algorithms=["ES256"], audience=audience, issuer="interlock")


def test_a_user_token_and_an_agent_token_give_a_delegated_token(exchange_server, idp_key):
    base = exchange_server
    planner = agent_token(base, "planner", "interop-planner-key-00000001")
    response = exchange(base, user_token(idp_key, "ada@example.com"), planner, scope="model:fast")
    assert response.status_code == 200, response.text
    body = response.json()
    assert body["issued_token_type"] == ACCESS_TOKEN and body["token_type"] == "Bearer" and body["scope"] == "model:fast"
    assert response.headers["cache-control"] == "no-store"

    claims = interlock_claims(base, body["access_token"])
    assert claims["sub"] == "ada@example.com"
    assert claims["act"] == {"sub": "spiffe://interlock.local/agent/planner"}

    client = openai.OpenAI(base_url=base + "/v1", api_key=body["access_token"], max_retries=0)
    answer = client.chat.completions.create(model="fast", messages=[{"role": "user", "content": "on behalf of ada"}])
    assert answer.choices[0].message.content == "Mock answer to: on behalf of ada"
    # The token carries model:fast only, though the planner may use smart as well.
    with pytest.raises(openai.PermissionDeniedError) as refused:
        client.chat.completions.create(model="smart", messages=[{"role": "user", "content": "hi"}])
    assert refused.value.code == "insufficient_scope"

    # Delegating onwards nests the earlier actor.
    researcher = agent_token(base, "researcher", "interop-research-key-0000001")
    onward = exchange(base, body["access_token"], researcher)
    assert onward.status_code == 200, onward.text
    nested = interlock_claims(base, onward.json()["access_token"])
    assert nested["act"] == {"sub": "spiffe://interlock.local/agent/researcher", "act": {"sub": "spiffe://interlock.local/agent/planner"}}


def test_exchange_errors_follow_rfc8693(exchange_server, idp_key):
    base = exchange_server
    planner = agent_token(base, "planner", "interop-planner-key-00000001")
    outsider = agent_token(base, "outsider", "interop-outsider-key-0000001")
    user = user_token(idp_key, "bob@example.com")
    delegated = exchange(base, user, planner).json()["access_token"]
    cases = [
        (exchange(base, user, "not-a-token"), "invalid_request"),
        (httpx.post(base + "/oauth/token", data={"grant_type": EXCHANGE, "subject_token": user, "subject_token_type": ACCESS_TOKEN}), "invalid_request"),
        (exchange(base, delegated, outsider), "invalid_request"),  # the planner may not hand bob to the outsider
        (exchange(base, user_token(idp_key, "eve@example.com", may_act={"sub": "spiffe://interlock.local/agent/researcher"}), planner), "invalid_request"),
        (exchange(base, user, outsider, scope="model:smart"), "invalid_scope"),
        (exchange(base, user, planner, audience="https://elsewhere.example.com"), "invalid_target"),
    ]
    for response, error in cases:
        assert response.status_code == 400, response.text
        assert response.json()["error"] == error, response.text
        assert response.json()["error_description"]


def test_audience_restricts_where_the_token_is_valid(exchange_server, idp_key):
    base = exchange_server
    planner = agent_token(base, "planner", "interop-planner-key-00000001")
    response = exchange(base, user_token(idp_key, "ada@example.com"), planner, resource="https://tools.example.com")
    assert response.status_code == 200, response.text
    token = response.json()["access_token"]
    assert interlock_claims(base, token, audience="https://tools.example.com")["aud"] == ["https://tools.example.com"]
    with pytest.raises(openai.AuthenticationError):
        openai.OpenAI(base_url=base + "/v1", api_key=token, max_retries=0).chat.completions.create(
            model="fast", messages=[{"role": "user", "content": "hi"}])
