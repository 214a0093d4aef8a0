"""Class D: federation of an external OIDC id_token (wire-contract.md §2.4 D). The test
itself is the external issuer: it serves a JWKS on 127.0.0.1:CONFORMANCE_FEDERATION_ISSUER_PORT
and signs id_tokens; the harness registers that issuer, JWKS URL and audience as a subject
issuer of the zone."""

from __future__ import annotations

import asyncio
import time
import uuid

import pytest
from caracalai import Caracal
from caracalai_identity import verify_token
from caracalai_oauth import InvalidToken, OAuthClient

from conformance_support import LocalIssuer, assert_mandate_shape


@pytest.fixture(scope="module")
def issuer(federation):
    with LocalIssuer(federation.port, federation.jwks_path, federation.alg) as local:
        yield local


def id_token_claims(federation, sub: str, **overrides) -> dict:
    now = int(time.time())
    claims = {"iss": federation.issuer, "sub": sub, "aud": federation.audience, "iat": now, "exp": now + 300}
    claims.update(overrides)
    return claims


def test_federate_subject_mints_a_user_session_mandate(core, federation, issuer):
    sub = f"conformance-user-{uuid.uuid4()}"
    caracal = Caracal.from_client_secret(
        coordinator_url=core.sts_url,  # never contacted by federate_subject
        sts_url=core.sts_url,
        zone_id=core.zone_id,
        application_id=core.app_id,
        client_secret=core.app_secret,
    )
    try:
        subject = caracal.federate_subject(issuer.sign(id_token_claims(federation, sub)))
    finally:
        asyncio.run(caracal.aclose())
    assert issuer.fetches >= 1, "the STS never fetched the issuer's JWKS"

    _, c = assert_mandate_shape(subject.token)
    assert (c["use"], c["sub_type"], c["sub"]) == ("session", "user", sub)
    assert c["sid"] == c["root_sid"] == subject.subject_authority_record_id
    assert c["iss"] == core.issuer and c["aud"] == [core.issuer]
    assert c["zone_id"] == core.zone_id and c["client_id"] == core.app_id
    assert "scope" not in c and "target" not in c
    assert c["exp"] - c["iat"] == 900
    assert 880 <= subject.expires_in_seconds <= 900

    decoded = asyncio.run(
        verify_token(
            subject.token,
            issuer=core.issuer,
            audience=core.issuer,
            expected_zone_id=core.zone_id,
            required_use="session",
        )
    )
    assert decoded["sub_type"] == "user"


def test_external_sub_is_kept_byte_exact(core, federation, issuer, make_exchanger):
    sub = f"Usér Ünïcode/{uuid.uuid4()}@例え.jp"
    minted = make_exchanger().federate_subject(issuer.sign(id_token_claims(federation, sub)), ttl_seconds=120)
    _, c = assert_mandate_shape(minted.token)
    assert c["sub"] == sub
    assert c["exp"] - c["iat"] == 120


def test_oauthclient_federate_subject_accepts_the_body(core, federation, issuer):
    async def run():
        client = OAuthClient(core.sts_url, core.zone_id, core.app_id)
        try:
            return await client.federate_subject(
                issuer.sign(id_token_claims(federation, f"conformance-user-{uuid.uuid4()}")),
                client_secret=core.app_secret,
            )
        finally:
            await client.aclose()

    result = asyncio.run(run())
    assert result.target_resources == ()
    assert 0 < result.expires_in <= 900


@pytest.mark.parametrize(
    "case",
    ["wrong_audience", "wrong_issuer", "expired", "unknown_key", "caracal_prefixed_sub", "control_char_sub"],
)
def test_invalid_id_token_is_invalid_token_401(federation, issuer, make_exchanger, case):
    sub = f"conformance-user-{uuid.uuid4()}"
    now = int(time.time())
    sign = issuer.sign
    if case == "wrong_audience":
        token = sign(id_token_claims(federation, sub, aud="conformance-other-audience"))
    elif case == "wrong_issuer":
        token = sign(id_token_claims(federation, sub, iss="https://issuer.invalid"))
    elif case == "expired":
        token = sign(id_token_claims(federation, sub, iat=now - 900, exp=now - 600))
    elif case == "unknown_key":
        token = issuer.sign(id_token_claims(federation, sub), key=issuer.other_key(), kid="conformance-unknown")
    elif case == "caracal_prefixed_sub":
        token = sign(id_token_claims(federation, "caracal:app-1"))
    else:
        token = sign(id_token_claims(federation, "user\u0007bell"))
    with pytest.raises(InvalidToken) as err:
        make_exchanger().federate_subject(token)
    assert err.value.http_status == 401
    assert err.value.description.startswith("invalid subject_token"), err.value.description
    assert err.value.request_id
