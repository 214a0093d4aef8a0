"""Error mapping of /oauth/2/token through the libraries' typed exceptions, and the form
rules checked before anything else (wire-contract.md §1.2, §1.3, §2.2, §2.4 C, §2.8)."""

from __future__ import annotations

import asyncio
import uuid

import httpx
import pytest
from caracalai_oauth import (
    AccessDenied,
    CaracalError,
    ExchangeOptions,
    InvalidToken,
    OAuthClient,
    ServiceUnavailable,
    ZoneMismatch,
    raise_for_caracal_error,
)

from conformance_support import (
    ACCESS_TOKEN_TYPE,
    ID_TOKEN_TYPE,
    LIFECYCLE,
    assert_error_body,
    claims_of,
    opt,
    post_token,
    token_url,
)

# --- credentials, policy and zone -------------------------------------------------------


def test_wrong_secret_is_access_denied_401(make_exchanger, core):
    with pytest.raises(AccessDenied) as err:
        make_exchanger(secret=core.app_secret + "x").get_token()
    e = err.value
    assert (e.http_status, e.code, e.description) == (401, "access_denied", "invalid client credentials")
    assert e.request_id
    assert not e.is_retryable


def test_unknown_application_is_access_denied_401(make_exchanger):
    with pytest.raises(AccessDenied) as err:
        make_exchanger(app_id=f"conformance-{uuid.uuid4()}").get_token()
    assert (err.value.http_status, err.value.description) == (401, "invalid client credentials")


def test_only_unknown_resources_is_policy_denied_403(make_exchanger, core):
    with pytest.raises(AccessDenied) as err:
        make_exchanger().mint_mandate(resource=core.unknown_resource, scopes=[LIFECYCLE])
    assert err.value.http_status == 403
    assert err.value.description.startswith("policy denied"), err.value.description
    assert err.value.request_id


def test_application_of_another_zone_is_zone_mismatch(make_exchanger, core, other_zone_id):
    with pytest.raises(ZoneMismatch) as err:
        make_exchanger(zone_id=other_zone_id).get_token()
    e = err.value
    assert (e.http_status, e.code) == (403, "zone_invalid")
    assert core.zone_id in e.description and other_zone_id in e.description, e.description


def test_control_resource_outside_a_control_key_exchange_is_denied(make_exchanger, core):
    audience = opt("CONFORMANCE_CONTROL_AUDIENCE", "caracal-control")
    with pytest.raises(AccessDenied) as err:
        make_exchanger().mint_mandate(resource=audience, scopes=[LIFECYCLE])
    assert err.value.http_status == 403


# --- class C: subject-token exchange by a client ----------------------------------------


def _exchange(core, subject_token: str, opts: ExchangeOptions):
    async def run():
        client = OAuthClient(core.sts_url, core.zone_id, core.app_id)
        try:
            return await client.exchange(subject_token, core.resource, opts)
        finally:
            await client.aclose()

    return asyncio.run(run())


def test_subject_token_exchange_outside_the_gateway_is_refused(core, make_exchanger):
    session = make_exchanger().mint_mandate(resource=core.resource, scopes=[LIFECYCLE]).token
    with pytest.raises(AccessDenied) as err:
        _exchange(
            core,
            session,
            ExchangeOptions(
                client_secret=core.app_secret,
                authority_record_id=claims_of(session)["sid"],
                scopes=[LIFECYCLE],
                one_shot=True,
            ),
        )
    assert err.value.http_status == 403
    d = err.value.description
    assert d == "resource exchanges must use the Gateway" or d.startswith("policy denied"), d


def test_garbage_subject_token_is_invalid_token_401(core):
    with pytest.raises(InvalidToken) as err:
        _exchange(
            core,
            "eyJhbGciOiJFUzI1NiJ9.eyJzdWIiOiJ4In0.AAAA",
            ExchangeOptions(client_secret=core.app_secret, scopes=[LIFECYCLE], one_shot=True),
        )
    assert err.value.http_status == 401
    assert err.value.description.startswith("invalid subject_token"), err.value.description


# --- form rules (§2.2) ------------------------------------------------------------------


def _form_cases(core):
    form = core.form()
    dup = core.form(zone_id=[core.zone_id, core.zone_id])
    return {
        "query_string": (dict(data=form, query="zone_id=x"), 400, "invalid_token", "query parameters are not allowed"),
        "duplicate_field": (dict(data=dup), 400, "invalid_token", "duplicate form field: zone_id"),
        "actor_token": (dict(data=core.form(actor_token="x")), 400, "invalid_token", None),
        "client_assertion": (dict(data=core.form(client_assertion="x")), 400, "invalid_token", None),
        "wrong_grant_type": (dict(data=core.form(grant_type="client_credentials")), 400, "invalid_token", "unsupported grant_type"),
        "subject_token_without_type": (dict(data=core.form(subject_token="x")), 400, "invalid_token", None),
        "unknown_subject_token_type": (
            dict(data=core.form(subject_token="x", subject_token_type="urn:x")), 400, "invalid_token", None,
        ),
        "ttl_not_integer": (dict(data=core.form(ttl_seconds="abc")), 400, "invalid_token", "invalid ttl_seconds"),
        "ttl_negative": (dict(data=core.form(ttl_seconds="-5")), 400, "invalid_token", "ttl_seconds must be positive"),
        "ttl_above_cap": (dict(data=core.form(ttl_seconds="3601")), 400, "invalid_token", "ttl_seconds exceeds token TTL cap"),
        "blank_resource": (dict(data=core.form(resource=[core.resource, "   "])), 400, "invalid_token", None),
        "json_body": (dict(json={"grant_type": "x"}), 415, "invalid_token", None),
        "body_over_64k": (dict(data=core.form(scope="a" * (65 * 1024))), 413, "payload_too_large", None),
    }


FORM_CASES = [
    "query_string", "duplicate_field", "actor_token", "client_assertion", "wrong_grant_type",
    "subject_token_without_type", "unknown_subject_token_type", "ttl_not_integer", "ttl_negative",
    "ttl_above_cap", "blank_resource", "json_body", "body_over_64k",
]


@pytest.mark.parametrize("case", FORM_CASES)
def test_form_rule_is_rejected_and_mapped_with_request_id(core, case):
    kwargs, status, code, description = _form_cases(core)[case]
    resp = post_token(core.sts_url, **kwargs)
    body = assert_error_body(resp, status, code)
    if description is not None:
        assert body.get("error_description") == description
    with pytest.raises(CaracalError) as err:
        raise_for_caracal_error(resp)
    if code == "invalid_token":
        assert type(err.value) is InvalidToken
    assert (err.value.code, err.value.http_status) == (code, status)
    assert err.value.request_id == resp.headers["x-request-id"]


def test_other_methods_are_405_invalid_token(core):
    resp = httpx.get(token_url(core.sts_url), timeout=30)
    assert_error_body(resp, 405, "invalid_token")


def test_federation_form_with_a_resource_is_400(core):
    form = {
        "grant_type": core.form()["grant_type"],
        "zone_id": core.zone_id,
        "application_id": core.app_id,
        "client_secret": core.app_secret,
        "subject_token": "a.b.c",
        "subject_token_type": ID_TOKEN_TYPE,
        "resource": core.resource,
    }
    assert_error_body(post_token(core.sts_url, form), 400, "invalid_token")


def test_subject_token_type_access_token_is_accepted_by_the_parser(core):
    # Sanity check for the case above: the same shape with the access-token type gets past
    # the form rules (it fails later, as an invalid subject token).
    form = core.form(subject_token="a.b.c", subject_token_type=ACCESS_TOKEN_TYPE)
    assert_error_body(post_token(core.sts_url, form), 401, "invalid_token")


# --- request ids (§1.3) -----------------------------------------------------------------


def test_inbound_request_id_is_echoed_on_errors_and_successes(core):
    rid = f"conformance-{uuid.uuid4()}"
    err = post_token(core.sts_url, core.form(grant_type="x"), headers={"X-Request-Id": rid})
    assert err.headers["x-request-id"] == rid
    assert err.json()["requestId"] == rid
    ok = post_token(core.sts_url, core.form(), headers={"X-Request-Id": rid + "-ok"})
    assert ok.status_code == 200, ok.text
    assert ok.headers["x-request-id"] == rid + "-ok"


def test_invalid_inbound_request_id_is_replaced(core):
    resp = post_token(core.sts_url, core.form(grant_type="x"), headers={"X-Request-Id": "has space"})
    rid = resp.headers["x-request-id"]
    assert rid != "has space"
    assert uuid.UUID(rid).version == 7
    assert resp.json()["requestId"] == rid


# --- availability and rate limits -------------------------------------------------------


def test_sts_unavailable_maps_to_retryable_service_unavailable(make_exchanger, unavailable_sts_url):
    with pytest.raises(ServiceUnavailable) as err:
        make_exchanger(sts_url=unavailable_sts_url).get_token()
    e = err.value
    assert (e.http_status, e.code) == (503, "sts_unavailable")
    assert e.is_retryable
    assert e.request_id


def test_more_than_60_failed_secrets_block_even_the_right_secret(core, make_exchanger, ratelimit_app):
    app_id, secret = ratelimit_app
    bad = core.form(application_id=app_id, client_secret=secret + "x")
    with httpx.Client(timeout=30) as client:
        statuses = [client.post(token_url(core.sts_url), data=bad).status_code for _ in range(61)]
    assert statuses[0] == 401 and set(statuses) <= {401, 429}, statuses
    with pytest.raises(CaracalError) as err:
        make_exchanger(app_id=app_id, secret=secret).get_token()
    e = err.value
    assert (e.http_status, e.code) == (429, "provider_rate_limited")
    assert e.is_retryable
