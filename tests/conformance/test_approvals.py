"""Approval holds: ApprovalRequired from mint_mandate, the long poll, and the retry while
pending (wire-contract.md §2.10). The harness provisions a policy whose decision for
CONFORMANCE_APPROVAL_RESOURCE / _SCOPES carries a step_up_required diagnostic."""

from __future__ import annotations

import re
import time
import uuid
from datetime import datetime, timezone

import httpx
import pytest
from caracalai_oauth import ApprovalRequired

from conformance_support import GRANT_TYPE, assert_error_body, post_token


def approvals_url(core, approval_id: str) -> str:
    return f"{core.sts_url}/approvals/{approval_id}"


def hold(make_exchanger, approval, **kwargs) -> ApprovalRequired:
    with pytest.raises(ApprovalRequired) as err:
        make_exchanger().mint_mandate(
            resource=approval.resource,
            scopes=approval.scopes,
            session_id=approval.agent_session_id,
            delegation_id=approval.delegation_edge_id,
            **kwargs,
        )
    return err.value


def test_held_mint_raises_approval_required_with_the_challenge(make_exchanger, approval):
    e = hold(make_exchanger, approval)
    assert (e.http_status, e.code) == (401, "interaction_required")
    uuid.UUID(e.approval_id)
    assert re.fullmatch(r"[0-9a-f]{64}", e.binding), e.binding
    assert e.state == "pending"
    assert e.tier
    assert e.request_id
    expires = datetime.fromisoformat(e.expires_at.replace("Z", "+00:00"))
    assert expires > datetime.now(timezone.utc)

    # Holds are idempotent per binding, and a retry while pending answers the same hold.
    again = hold(make_exchanger, approval)
    assert (again.approval_id, again.binding) == (e.approval_id, e.binding)
    retried = hold(make_exchanger, approval, approval_id=e.approval_id)
    assert (retried.approval_id, retried.binding) == (e.approval_id, e.binding)


def test_hold_response_has_the_challenge_header_and_body(core, approval):
    form = {
        "grant_type": GRANT_TYPE,
        "zone_id": core.zone_id,
        "application_id": core.app_id,
        "client_secret": core.app_secret,
        "scope": " ".join(sorted(set(approval.scopes))),
        "resource": approval.resource,
        "agent_session_id": approval.agent_session_id,
        "delegation_edge_id": approval.delegation_edge_id,
    }
    resp = post_token(core.sts_url, form)
    extra = ("approval_id", "approval_type", "state", "tier", "binding", "approval_expires_at")
    body = assert_error_body(resp, 401, "interaction_required", extra)
    assert set(body) == {"error", "error_description", "requestId", *extra}, body
    assert body["approval_type"] == "human_approval"
    assert body["error_description"] == "Human approval required for this request"
    assert resp.headers.get("www-authenticate") == 'Bearer error="interaction_required"'


def test_long_poll_holds_for_wait_and_answers_pending(core, make_exchanger, approval):
    e = hold(make_exchanger, approval)
    started = time.monotonic()
    resp = httpx.get(approvals_url(core, e.approval_id), params={"wait": 1}, timeout=15)
    elapsed = time.monotonic() - started
    assert resp.status_code == 200, resp.text
    assert resp.headers["content-type"].split(";")[0].strip() == "application/json"
    body = resp.json()
    assert set(body) == {"id", "state", "expires_at"}, body
    assert (body["id"], body["state"]) == (e.approval_id, "pending")
    # The library polls in a tight loop with no client-side sleep; it relies on the server
    # holding each request for `wait` seconds while the hold stays pending.
    assert elapsed >= 0.9, f"wait=1 answered after {elapsed:.2f}s"

    started = time.monotonic()
    assert make_exchanger().wait_for_approval(e.approval_id, timeout_seconds=2) == "pending"
    assert time.monotonic() - started < 15


def test_poll_answers_now_without_wait(core, make_exchanger, approval):
    e = hold(make_exchanger, approval)
    started = time.monotonic()
    resp = httpx.get(approvals_url(core, e.approval_id), timeout=15)
    assert resp.status_code == 200 and resp.json()["state"] == "pending"
    assert time.monotonic() - started < 0.9


def test_unknown_or_malformed_approval_ids_are_404(core):
    for approval_id in (str(uuid.uuid4()), "not-a-uuid"):
        resp = httpx.get(approvals_url(core, approval_id), timeout=15)
        body = assert_error_body(resp, 404, "resource_not_found")
        assert body.get("error_description") == "approval not found"


def test_invalid_wait_is_400(core, make_exchanger, approval):
    e = hold(make_exchanger, approval)
    for wait in ("abc", "-1"):
        resp = httpx.get(approvals_url(core, e.approval_id), params={"wait": wait}, timeout=15)
        body = assert_error_body(resp, 400, "invalid_token")
        assert body.get("error_description") == "invalid wait"
