"""Class B: the delegated gateway mandate, minted by mint_mandate under a bound agent
session and delegation edge (wire-contract.md §2.4 B, §2.5, §3.2)."""

from __future__ import annotations

import asyncio

import pytest
from caracalai_oauth import AccessDenied, ExchangeOptions, OAuthClient

from conformance_support import assert_mandate_shape, claims_of


def mint(make_exchanger, delegated, **kwargs):
    return make_exchanger().mint_mandate(
        resource=delegated.resource,
        scopes=delegated.scopes,
        session_id=delegated.agent_session_id,
        delegation_id=delegated.delegation_edge_id,
        **kwargs,
    )


def test_delegated_mint_is_a_gateway_mandate_with_chain_claims(core, delegated, make_exchanger):
    minted = mint(make_exchanger, delegated)
    _, c = assert_mandate_shape(minted.token)

    assert c["use"] == "gateway"
    assert c["iss"] == core.issuer and c["aud"] == [core.issuer]
    assert c["scope"] == " ".join(sorted(set(delegated.scopes)))
    assert c["target"] == [delegated.resource]
    assert c["sub"] == core.app_id and c["client_id"] == core.app_id
    assert c["sub_type"] == "application" and c["zone_id"] == core.zone_id
    assert c["root_sid"] == c["sid"], "a direct delegated mint has root_sid = sid"

    assert c["agent_session_id"] == delegated.agent_session_id
    assert c["delegation_edge_id"] == delegated.delegation_edge_id
    assert c["target_session_id"] == delegated.agent_session_id
    path = c["delegation_path"]
    assert path[-1] == delegated.delegation_edge_id, "delegation_path runs root → leaf"
    assert c["hop_count"] == len(path)
    assert type(c["delegation_graph_epoch"]) is int and c["delegation_graph_epoch"] >= 1

    chain = c["delegation_chain"]
    assert len(chain) == len(path) + 1
    for hop, edge_id in zip(chain, path):
        assert set(hop) == {"application_id", "agent_session_id", "delegation_edge_id"}, hop
        assert hop["delegation_edge_id"] == edge_id and hop["application_id"]
    assert chain[-1] == {"application_id": core.app_id, "agent_session_id": delegated.agent_session_id}
    assert chain[-2]["application_id"] == delegated.issuer_app_id
    if delegated.source_session_id:
        assert c["source_session_id"] == delegated.source_session_id
        assert chain[-2]["agent_session_id"] == delegated.source_session_id
    else:
        assert c["source_session_id"] == chain[-2]["agent_session_id"]

    # 900 s by default, less when the edge or its constraints expire sooner (§2.6).
    assert 0 < c["exp"] - c["iat"] <= 900
    assert 0 < minted.expires_in_seconds <= c["exp"] - c["iat"]


def test_delegated_mints_are_never_cached_and_each_has_its_own_jti(delegated, make_exchanger):
    ex = make_exchanger()
    kwargs = dict(
        resource=delegated.resource,
        scopes=delegated.scopes,
        session_id=delegated.agent_session_id,
        delegation_id=delegated.delegation_edge_id,
    )
    a, b = ex.mint_mandate(**kwargs), ex.mint_mandate(**kwargs)
    assert a.token != b.token
    assert claims_of(a.token)["jti"] != claims_of(b.token)["jti"]


def test_oauthclient_accepts_the_delegated_mint_body(core, delegated):
    async def run():
        client = OAuthClient(core.sts_url, core.zone_id, core.app_id)
        try:
            return await client.exchange(
                "",
                delegated.resource,
                ExchangeOptions(
                    client_secret=core.app_secret,
                    session_id=delegated.agent_session_id,
                    delegation_id=delegated.delegation_edge_id,
                    scopes=delegated.scopes,
                    one_shot=True,
                ),
            )
        finally:
            await client.aclose()

    result = asyncio.run(run())
    assert result.target_resources == (delegated.resource,)
    assert claims_of(result.access_token)["use"] == "gateway"


def test_edge_ttl_constraint_caps_the_mandate(delegated, make_exchanger):
    if delegated.edge_ttl_cap is None:
        pytest.skip("[delegated] CONFORMANCE_EDGE_TTL_CAP not set")
    cap = delegated.edge_ttl_cap
    c = claims_of(mint(make_exchanger, delegated).token)
    assert c["exp"] - c["iat"] <= cap
    with pytest.raises(AccessDenied) as err:
        mint(make_exchanger, delegated, ttl_seconds=cap + 1)
    assert err.value.http_status == 403
    assert err.value.description == "requested ttl exceeds delegation ttl"


def test_delegated_mint_for_a_resource_outside_the_grant_is_denied(core, delegated, make_exchanger):
    with pytest.raises(AccessDenied) as err:
        make_exchanger().mint_mandate(
            resource=core.unknown_resource,
            scopes=delegated.scopes,
            session_id=delegated.agent_session_id,
            delegation_id=delegated.delegation_edge_id,
        )
    assert err.value.http_status == 403
    assert err.value.request_id
