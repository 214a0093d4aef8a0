"""Our mandates against the Caracal 1.0 verifiers (caracalai_identity.verify_token /
verify_config, caracalai_verify.authenticate), which fetch our zone JWKS themselves, and
the JWKS endpoint (wire-contract.md §2.9, §3.4)."""

from __future__ import annotations

import asyncio

import httpx
import pytest
from caracalai_identity import JwtConfig, TokenInvalidError, verify_config, verify_token
from caracalai_revocation import InMemoryRevocationStore
from caracalai_verify import authenticate

from conformance_support import LIFECYCLE, b64url_decode, jwt_parts


def jwks_url(core) -> str:
    return f"{core.sts_url}/.well-known/jwks.json"


@pytest.fixture
def session_token(core, make_exchanger) -> str:
    return make_exchanger().mint_mandate(resource=core.resource, scopes=[LIFECYCLE]).token


def test_session_mandate_passes_verify_token_and_verify_config(core, session_token):
    async def run():
        decoded = await verify_token(
            session_token,
            issuer=core.issuer,
            audience=core.issuer,
            expected_zone_id=core.zone_id,
            required_scopes=[LIFECYCLE],
            required_use="session",
        )
        claims = await verify_config(
            session_token,
            JwtConfig(
                issuer=core.issuer,
                audience=core.issuer,
                expected_zone_id=core.zone_id,
                required_scopes=[LIFECYCLE],
                required_targets=[core.resource],
                required_use="session",
            ),
        )
        return decoded, claims

    decoded, claims = asyncio.run(run())
    assert decoded["use"] == "session"
    assert claims.use == "session" and claims.scope == LIFECYCLE
    assert claims.client_id == core.app_id and claims.zone_id == core.zone_id
    assert claims.authority_record_id == claims.root_authority_record_id
    assert claims.target_resources == [core.resource]
    assert claims.hop_count is None and claims.delegation_chain == []


def test_session_mandate_passes_caracalai_verify_authenticate(core, session_token):
    result = asyncio.run(
        authenticate(
            session_token,
            issuer=core.issuer,
            audience=core.issuer,
            required_scopes=[LIFECYCLE],
            expected_zone_id=core.zone_id,
            revocations=InMemoryRevocationStore(),
            required_targets=[core.resource],
            required_use="session",
        )
    )
    assert result.ok, result.error
    assert result.principal.sub == core.app_id


def test_session_mandate_is_not_audienced_to_its_resources(core, session_token):
    with pytest.raises(TokenInvalidError) as err:
        asyncio.run(
            verify_token(
                session_token,
                issuer=core.issuer,
                audience=core.resource,
                expected_zone_id=core.zone_id,
                required_use="session",
            )
        )
    assert "audience" in str(err.value).lower()


def test_gateway_mandate_is_rejected_by_both_verifiers_for_its_use(core, delegated, make_exchanger):
    token = make_exchanger().mint_mandate(
        resource=delegated.resource,
        scopes=delegated.scopes,
        session_id=delegated.agent_session_id,
        delegation_id=delegated.delegation_edge_id,
    ).token

    async def run():
        errors = []
        for required_use in (None, "session"):
            try:
                await verify_token(
                    token,
                    issuer=core.issuer,
                    audience=core.issuer,
                    expected_zone_id=core.zone_id,
                    required_use=required_use,
                )
            except TokenInvalidError as err:
                errors.append(str(err))
        results = [
            await authenticate(
                token,
                issuer=core.issuer,
                audience=core.issuer,
                required_scopes=None,
                expected_zone_id=core.zone_id,
                revocations=InMemoryRevocationStore(),
                required_use=use,
            )
            for use in ("resource", "session")
        ]
        return errors, results

    errors, results = asyncio.run(run())
    # Signature, issuer, audience, expiry and required claims all pass; only `use` fails.
    assert errors == ["invalid_token: Token use validation failed"] * 2, errors
    assert [r.error.code for r in results] == ["invalid_token", "invalid_token"]


def test_jwks_serves_the_signing_key_with_contract_headers(core, session_token):
    resp = httpx.get(jwks_url(core), params={"zone_id": core.zone_id}, timeout=30)
    assert resp.status_code == 200, resp.text
    assert resp.headers["cache-control"] == "public, max-age=300, must-revalidate"
    assert resp.headers["x-content-type-options"] == "nosniff"
    assert resp.headers["content-type"].split(";")[0].strip() == "application/json"
    assert len(resp.content) <= 256 * 1024, "the Python verifier refuses JWKS over 256 KiB"
    keys = resp.json()["keys"]
    assert keys, "a zone with a signing key lists it"
    for key in keys:
        assert set(key) == {"kty", "crv", "use", "kid", "alg", "x", "y"}, key
        assert (key["kty"], key["crv"], key["use"], key["alg"]) == ("EC", "P-256", "sig", "ES256")
        for coord in ("x", "y"):
            assert "=" not in key[coord]
            assert len(b64url_decode(key[coord])) == 32, "coordinates are left-padded to 32 bytes"
    header, _, _ = jwt_parts(session_token)
    assert header["kid"] in {k["kid"] for k in keys}


def test_jwks_without_zone_is_400_and_unknown_zone_is_404(core):
    missing = httpx.get(jwks_url(core), timeout=30)
    assert missing.status_code == 400
    assert missing.json()["error"] == "invalid_token"
    assert missing.json().get("error_description") == "zone_id required"
    unknown = httpx.get(jwks_url(core), params={"zone_id": "conformance-no-such-zone"}, timeout=30)
    assert unknown.status_code == 404
    assert unknown.json()["error"] == "resource_not_found"
