"""Class E: the control key minted by caracalai_admin.ControlClient (wire-contract.md §2.4 E).
The harness provisions an application with traits control:invoke and
control:scope:<scope> for each of CONFORMANCE_CONTROL_SCOPES."""

from __future__ import annotations

import httpx
import pytest
from caracalai_admin import ControlClient, ControlClientError

from conformance_support import assert_mandate_shape


def client(core, control, **kwargs) -> ControlClient:
    params = dict(
        sts_url=core.sts_url,
        control_url=core.sts_url,  # only the token stage runs here
        audience=control.audience,
        application_id=control.app_id,
        client_secret=control.app_secret,
    )
    params.update(kwargs)
    return ControlClient(**params)


def test_control_key_is_a_resource_mandate_for_the_control_audience(core, control):
    requests: list[httpx.Request] = []
    http = httpx.Client(event_hooks={"request": [requests.append]})
    try:
        # ControlClient.invoke mints through this method before calling /v1/control/invoke.
        token = client(core, control, ttl_seconds=60, http_client=http, request_id="conformance-control")._mint_token(
            control.scopes
        )
    finally:
        http.close()
    assert b"zone_id" not in requests[0].content, "ControlClient sends no zone_id"

    _, c = assert_mandate_shape(token)
    assert c["use"] == "resource"
    assert c["aud"] == [control.audience] and c["target"] == [control.audience]
    assert c["scope"] == " ".join(control.scopes), "scope is echoed as sent (ControlClient does not sort)"
    assert c["zone_id"] == control.zone_id
    assert c["client_id"] == control.app_id and c["sub"] == control.app_id
    assert c["exp"] - c["iat"] == 60


def test_control_key_with_a_wrong_secret_fails_at_the_token_stage(core, control):
    with pytest.raises(ControlClientError) as err:
        client(core, control, client_secret=control.app_secret + "x")._mint_token(control.scopes)
    assert (err.value.stage, err.value.status, err.value.reason) == ("token", 401, "access_denied")
    assert err.value.definitive
