"""Interlock as an OAuth authorization server, driven over plain HTTP as RFC 6749 describes,
with tokens verified by `pyjwt` against the published JWKS and used by the `openai` client."""
import base64

import httpx
import jwt
import openai
import pytest

KEY = "interop-tester-key-000000001"


def token(server, **form):
    return httpx.post(server["base"] + "/oauth/token", data=form)


def test_client_credentials_token_verifies_with_pyjwt_and_opens_the_gateway(server):
    response = token(server, grant_type="client_credentials", client_id="tester", client_secret=KEY)
    assert response.status_code == 200, response.text
    assert response.headers["cache-control"] == "no-store"
    issued = response.json()
    assert issued["token_type"] == "Bearer" and issued["expires_in"] > 0

    discovery = httpx.get(server["base"] + "/.well-known/openid-configuration").json()
    jwks_client = jwt.PyJWKClient(discovery["jwks_uri"])
    signing_key = jwks_client.get_signing_key_from_jwt(issued["access_token"])
    claims = jwt.decode(issued["access_token"], signing_key.key, algorithms=["ES256"], audience="interlock", issuer=discovery["issuer"])
    assert claims["sub"] == "spiffe://interlock.local/agent/tester"
    assert {"exp", "iat", "jti"} <= set(claims)
    assert "model:fast" in claims["scope"].split(" ")

    client = openai.OpenAI(base_url=server["base"] + "/v1", api_key=issued["access_token"], max_retries=0)
    completion = client.chat.completions.create(model="fast", messages=[{"role": "user", "content": "hello with a token"}])
    assert completion.choices[0].message.content == "Mock answer to: hello with a token"


def test_basic_client_authentication(server):
    credentials = base64.b64encode(f"tester:{KEY}".encode()).decode()
    response = httpx.post(server["base"] + "/oauth/token", data={"grant_type": "client_credentials"}, headers={"authorization": f"Basic {credentials}"})
    assert response.status_code == 200, response.text


@pytest.mark.parametrize("form,status,error", [
    ({"grant_type": "client_credentials", "client_id": "tester", "client_secret": "wrong-secret-00000000"}, 401, "invalid_client"),
    ({"grant_type": "authorization_code", "code": "x"}, 400, "unsupported_grant_type"),
    ({"grant_type": "client_credentials", "client_id": "tester", "client_secret": KEY, "scope": "model:fast model:not-granted"}, 400, "invalid_scope"),
])
def test_token_errors_are_rfc6749(server, form, status, error):
    response = token(server, **form)
    assert response.status_code == status
    assert response.json()["error"] == error
    assert response.json()["error_description"]


def test_a_forged_token_is_refused_with_the_reason(server):
    forged = jwt.encode({"sub": "spiffe://interlock.local/agent/tester", "aud": "interlock", "iss": "interlock"}, "a-guessed-secret-of-thirty-two-bytes!", algorithm="HS256")
    client = openai.OpenAI(base_url=server["base"] + "/v1", api_key=forged, max_retries=0)
    with pytest.raises(openai.AuthenticationError) as refused:
        client.chat.completions.create(model="fast", messages=[{"role": "user", "content": "hi"}])
    assert "HS256" in refused.value.response.headers["www-authenticate"]


def b64url(data):
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


def test_an_hs256_token_keyed_with_the_published_public_key_is_refused(server):
    """The classic algorithm confusion: HMAC-sign a token with the server's own public key
    (as PEM and as the JWKS JSON) and hope it is verified with that key as an HMAC secret."""
    import hashlib
    import hmac
    import json
    import time

    from cryptography.hazmat.primitives import serialization

    jwk = httpx.get(server["base"] + "/.well-known/jwks.json").json()["keys"][0]
    public = jwt.algorithms.ECAlgorithm.from_jwk(json.dumps(jwk))
    pem = public.public_bytes(serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo)
    now = int(time.time())
    header = b64url(json.dumps({"alg": "HS256", "typ": "JWT", "kid": jwk["kid"]}).encode())
    payload = b64url(json.dumps({"iss": "interlock", "aud": "interlock", "sub": "spiffe://interlock.local/agent/tester",
                                 "iat": now, "exp": now + 600, "jti": "x", "scope": "model:fast"}).encode())
    for secret in (pem, json.dumps(jwk).encode()):
        signature = b64url(hmac.new(secret, f"{header}.{payload}".encode(), hashlib.sha256).digest())
        client = openai.OpenAI(base_url=server["base"] + "/v1", api_key=f"{header}.{payload}.{signature}", max_retries=0)
        with pytest.raises(openai.AuthenticationError) as refused:
            client.chat.completions.create(model="fast", messages=[{"role": "user", "content": "hi"}])
        assert "'HS256' is not accepted" in refused.value.response.headers["www-authenticate"]
