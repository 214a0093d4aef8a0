"""Class A: the bootstrap (lifecycle) mandate, minted by ClientSecretExchanger.get_token,
ClientSecretExchanger.mint_mandate and OAuthClient.exchange (wire-contract.md §2.4 A, §2.5–2.7)."""

from __future__ import annotations

import asyncio
import time

import httpx
import pytest
from caracalai_oauth import ExchangeOptions, InvalidToken, OAuthClient

from conformance_support import (
    ACCESS_TOKEN_TYPE,
    LIFECYCLE,
    assert_mandate_shape,
    claims_of,
    post_token,
)


def assert_bootstrap_claims(core, claims: dict, targets: list[str]) -> None:
    assert claims["iss"] == core.issuer
    assert claims["aud"] == [core.issuer]
    assert claims["use"] == "session"
    assert claims["scope"] == LIFECYCLE
    assert claims["target"] == sorted(targets)
    assert claims["sub"] == core.app_id
    assert claims["client_id"] == core.app_id
    assert claims["sub_type"] == "application"
    assert claims["zone_id"] == core.zone_id
    assert claims["root_sid"] == claims["sid"]
    for name in ("agent_session_id", "delegation_edge_id", "delegation_path", "hop_count"):
        assert name not in claims, f"bootstrap mandate carries {name}"


def test_get_token_mints_a_session_mandate_and_caches_it_until_near_exp(core, make_exchanger):
    posts: list[httpx.Request] = []
    http = httpx.Client(event_hooks={"request": [posts.append]})
    ex = make_exchanger(http_client=http)
    try:
        token = ex.get_token()
        _, claims = assert_mandate_shape(token)
        assert_bootstrap_claims(core, claims, [core.resource])
        assert claims["exp"] - claims["iat"] == 900, "default lifetime is 900 s"
        assert abs(claims["iat"] - time.time()) <= 60
        # The library caches the token until exp - min(60 s, lifetime / 2): a second
        # call must not reach the STS when exp is sane.
        assert ex.get_token() == token
        assert len(posts) == 1
    finally:
        http.close()


def test_mint_mandate_lifecycle_reports_remaining_lifetime_and_honours_ttl(core, make_exchanger):
    ex = make_exchanger()
    minted = ex.mint_mandate(resource=core.resource, scopes=[LIFECYCLE])
    _, claims = assert_mandate_shape(minted.token)
    assert_bootstrap_claims(core, claims, [core.resource])
    assert 880 <= minted.expires_in_seconds <= 900

    short = ex.mint_mandate(resource=core.resource, scopes=[LIFECYCLE], ttl_seconds=120)
    short_claims = claims_of(short.token)
    assert short_claims["exp"] - short_claims["iat"] == 120
    assert 100 <= short.expires_in_seconds <= 120
    assert short_claims["jti"] != claims["jti"]


def test_success_body_has_the_exact_shape_oauthclient_requires(core):
    resp = post_token(core.sts_url, core.form())
    assert resp.status_code == 200, resp.text
    assert resp.headers["content-type"].split(";")[0].strip() == "application/json"
    assert resp.headers.get("x-request-id")
    body = resp.json()
    assert set(body) == {
        "access_token", "token_type", "expires_in", "scope", "issued_token_type", "target_resources",
    }, body
    assert body["token_type"] == "Bearer"
    assert body["issued_token_type"] == ACCESS_TOKEN_TYPE
    assert type(body["expires_in"]) is int and body["expires_in"] == 900
    assert body["scope"] == LIFECYCLE
    assert body["target_resources"] == [core.resource]
    claims = claims_of(body["access_token"])
    assert body["expires_in"] == claims["exp"] - claims["iat"]


def test_oauthclient_exchange_without_subject_token_accepts_the_bootstrap_body(core):
    async def run():
        client = OAuthClient(core.sts_url, core.zone_id, core.app_id)
        try:
            return await client.exchange(
                "",
                core.resource,
                ExchangeOptions(client_secret=core.app_secret, scopes=[LIFECYCLE], cache=False),
            )
        finally:
            await client.aclose()

    result = asyncio.run(run())
    assert result.token_type == "Bearer"
    assert result.target_resources == (core.resource,)
    assert 0 < result.expires_in <= 900
    assert claims_of(result.access_token)["use"] == "session"


def test_resources_not_owned_are_dropped_and_the_rest_granted(core, make_exchanger):
    ex = make_exchanger(resources=[core.unknown_resource, core.resource])
    claims = claims_of(ex.get_token())
    assert claims["target"] == [core.resource]

    resp = post_token(core.sts_url, core.form(resource=[core.unknown_resource, f"  {core.resource} "]))
    assert resp.status_code == 200, resp.text
    assert resp.json()["target_resources"] == [core.resource]


@pytest.mark.parametrize("ttl", [3600, 3601])
def test_ttl_cap_without_subject_token_is_3600(core, make_exchanger, ttl):
    ex = make_exchanger()
    if ttl == 3600:
        minted = ex.mint_mandate(resource=core.resource, scopes=[LIFECYCLE], ttl_seconds=ttl)
        claims = claims_of(minted.token)
        assert claims["exp"] - claims["iat"] == 3600
        return
    with pytest.raises(InvalidToken) as err:
        ex.mint_mandate(resource=core.resource, scopes=[LIFECYCLE], ttl_seconds=ttl)
    assert err.value.http_status == 400
    assert err.value.description == "ttl_seconds exceeds token TTL cap"
    assert err.value.request_id


def test_ttl_zero_means_default(core):
    resp = post_token(core.sts_url, core.form(ttl_seconds="0"))
    assert resp.status_code == 200, resp.text
    assert resp.json()["expires_in"] == 900
