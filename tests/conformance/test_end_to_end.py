"""The whole Caracal 1.0 flow through the real client libraries (group `e2e`), against our
admin API, STS, Coordinator, gateway and audit ledger running together on one Redis
database and one Postgres database:

1. provisioning with `caracalai_admin.AdminClient` and its reconcilers: a zone, two
   applications, an `api_key` provider holding a real credential, a resource whose upstream
   is a recording echo server on 127.0.0.1;
2. a Rego grants document, a policy set, its activation, and the wait until every live STS
   and gateway reports the version loaded;
3. a root session and a child session with a narrowed delegation (Coordinator, `caracalai`);
4. a delegated mint at the STS for the child;
5. a call through the gateway: the upstream receives the sealed credential, never the mandate;
6. the audit of that call read back through the admin API by the gateway's request id:
   both the gateway's `token_exchange` and its `gateway_resource_request`;
7. revoking the delegation: the gateway refuses a mandate minted before it, the STS refuses
   a new one.

Nothing is provisioned by the harness: the test creates its own zone with a unique slug."""

from __future__ import annotations

import asyncio
import hashlib
import json
import time
import uuid
from typing import Any
from urllib.parse import urlsplit

import httpx
import pytest
from caracalai import AccessDenied, Authority, Caracal, CaracalContext
from caracalai_admin import (
    AdminApiError,
    AdminClient,
    ResourceGrant,
    author_grants_document,
    ensure_api_key_provider,
    ensure_application,
    ensure_resource,
    provider_identifier,
)
from caracalai_oauth import ClientCredentials, ClientSecretExchanger

from conformance_support import EndToEndEnv, assert_mandate_shape, claims_of

READ, WRITE = "records:read", "records:write"
# The session label the grants document turns into a role holding both scopes.
ROLE = "records-agent"
# The declared operation the child calls; the upstream receives it under its base path.
PATH = "/records"
# The header the provider places its credential in.
CREDENTIAL_HEADER = "x-api-key"
# The child's edge lives this long (it also caps the mandates minted through it).
EDGE_TTL = 600
# How long each propagation may take: activation to `loaded`, a gateway call to its audit
# rows in the ledger, a revocation to the gateway.
ACTIVATION_DEADLINE = 60.0
AUDIT_DEADLINE = 30.0
REVOCATION_DEADLINE = 5.0
# Mandates minted for the child before the revocation, spent one by one at the gateway
# (each is single-use) until it refuses.
SPARE_MANDATES = 12


def unique(prefix: str) -> str:
    return f"{prefix}-{uuid.uuid4().hex[:10]}"


class RecordingTransport(httpx.AsyncBaseTransport):
    """The real HTTP transport, keeping a copy of each request's headers, so the test
    knows the mandate the library put on the wire."""

    def __init__(self) -> None:
        self._inner = httpx.AsyncHTTPTransport()
        self.sent: list[httpx.Headers] = []

    async def handle_async_request(self, request: httpx.Request) -> httpx.Response:
        self.sent.append(request.headers.copy())
        return await self._inner.handle_async_request(request)

    async def aclose(self) -> None:
        await self._inner.aclose()


def bootstrap_exchanger(e2e: EndToEndEnv, zone: str, app_id: str, secret: str, resource: str) -> ClientSecretExchanger:
    creds = ClientCredentials(zone_id=zone, application_id=app_id, client_secret=secret)
    return ClientSecretExchanger(sts_url=e2e.sts_url, credentials=lambda: creds, resources=[resource])


def refused_bootstrap(e2e: EndToEndEnv, zone: str, app_id: str, secret: str, resource: str) -> AccessDenied:
    """The application's bootstrap mint for `resource`, expected to be refused."""
    exchanger = bootstrap_exchanger(e2e, zone, app_id, secret, resource)
    try:
        with pytest.raises(AccessDenied) as refused:
            exchanger.get_token()
        return refused.value
    finally:
        exchanger.close()


def wait_until_loaded(admin: AdminClient, zone: str, set_id: str, activation: dict) -> dict:
    """Polls the activation status until `loaded` (failing on `failed` or the deadline)."""
    until = time.monotonic() + ACTIVATION_DEADLINE
    while True:
        status = admin.policy_sets.activation_status(
            zone, set_id, version_id=activation["version_id"], outbox_id=activation["outbox_id"]
        )
        state = status["propagation_status"]
        if state == "loaded":
            return status
        assert state != "failed", status
        assert time.monotonic() < until, f"activation not loaded after {ACTIVATION_DEADLINE} s: {status}"
        time.sleep(0.25)


def audit_of_request(admin: AdminClient, zone: str, request_id: str, wanted: set[str]) -> list[dict]:
    """The ledger's events for `request_id` through `AdminClient.audit.by_request`, polled
    until every wanted event type is there (the ledger ingests asynchronously; until the
    first row lands the API answers 404 `request_not_found`)."""
    until = time.monotonic() + AUDIT_DEADLINE
    while True:
        try:
            items = admin.audit.by_request(zone, request_id)
        except AdminApiError as err:
            assert (err.status, err.code) == (404, "request_not_found"), (err.status, err.code, err.body)
            items = []
        assert isinstance(items, list), items
        if wanted <= {item["event_type"] for item in items}:
            return items
        assert time.monotonic() < until, (
            f"audit for {request_id} after {AUDIT_DEADLINE} s: {[i['event_type'] for i in items]}"
        )
        time.sleep(0.25)


def present(e2e: EndToEndEnv, resource: str, token: str) -> httpx.Response:
    """One gateway call with a mandate minted earlier. Raw httpx: the libraries have no
    call that presents a given mandate (every transport mints a fresh one per request)."""
    with httpx.Client(timeout=30.0) as client:
        return client.get(
            e2e.gateway_url + PATH,
            headers={"Authorization": f"Bearer {token}", "X-Caracal-Resource": resource},
        )


@pytest.mark.timeout(300)
def test_the_caracal_1_0_flow_end_to_end(e2e: EndToEndEnv) -> None:
    admin = AdminClient(
        api_url=e2e.api_url,
        admin_token=e2e.admin_token,
        coordinator_url=e2e.coordinator_url,
        coordinator_token=e2e.coordinator_token,
    )
    resource_id = f"resource://{unique('records')}"
    upstream_base = urlsplit(e2e.upstream_url).path

    # --- 1. provisioning -------------------------------------------------------------------
    zone = admin.zones.create({"name": "End to end", "slug": unique("e2e")})["id"]
    secret = f"e2e-secret-{uuid.uuid4().hex}"
    app_id = ensure_application(admin, zone, name="planner", traits=[], client_secret=secret)
    bystander = admin.applications.create(
        zone, {"name": "bystander", "registration_method": "managed", "traits": []}
    )
    provider_id = ensure_api_key_provider(
        admin,
        zone,
        name="records-key",
        identifier=provider_identifier("records-key"),
        public_config={"header_name": "X-Api-Key"},
        api_key=e2e.upstream_credential,
    )
    assert provider_id
    provider = admin.providers.get(zone, provider_id)
    assert provider["kind"] == "api_key", provider
    assert e2e.upstream_credential not in json.dumps(provider), "the sealed credential is never returned"
    resource = ensure_resource(
        admin,
        zone,
        name="records",
        identifier=resource_id,
        scopes=[READ, WRITE],
        upstream_url=e2e.upstream_url,
        credential_provider_id=provider_id,
        operations=[
            {"method": "GET", "path": PATH, "scope": READ},
            {"method": "POST", "path": PATH, "scope": WRITE},
        ],
    )
    assert resource["identifier"] == resource_id
    assert resource["operation_enforcement"] == "enforced", "the API's default (settled point 2)"

    # --- 2. policy and activation ------------------------------------------------------------
    # No policy set is active yet: the zone's deny-all fallback refuses the application.
    before = refused_bootstrap(e2e, zone, app_id, secret, resource_id)
    assert before.http_status == 403 and "no_active_policy_set" in before.description, before
    content = author_grants_document(
        [ResourceGrant(application_id=app_id, resource_identifier=resource_id, scopes=[READ, WRITE], role=ROLE)]
    )
    assert admin.policies.validate(content)["valid"] is True
    policy = admin.policies.create(zone, {"name": "records-grants", "content": content})
    policy_set = admin.policy_sets.create(zone, "records-policy")
    version = admin.policy_sets.add_version(zone, policy_set["id"], [{"policy_version_id": policy["version_id"]}])
    activation = admin.policy_sets.activate(zone, policy_set["id"], version["version_id"])
    assert activation["activated"] is True and activation["outbox_id"], activation
    status = wait_until_loaded(admin, zone, policy_set["id"], activation)
    # Every role shares one Redis, so `loaded` counts the gateway too: it reported the version.
    for group in ("sts", "gateways"):
        assert status[group]["live"] >= 1, status
        assert status[group]["loaded"] == status[group]["live"], status
        assert {i["reported_version_id"] for i in status[group]["instances"]} == {version["version_id"]}
    assert status["active_version_id"] == version["version_id"]
    # The loaded document grants the planner only: the other application is refused by it.
    other = refused_bootstrap(e2e, zone, bystander["id"], bystander["client_secret"], resource_id)
    assert other.http_status == 403 and "no_active_policy_set" not in other.description, other

    # --- 3 to 7 through the SDK ------------------------------------------------------------------
    recording = RecordingTransport()

    async def scenario() -> dict[str, Any]:
        seen: dict[str, Any] = {}
        caracal = Caracal.from_client_secret(
            coordinator_url=e2e.coordinator_url,
            sts_url=e2e.sts_url,
            zone_id=zone,
            application_id=app_id,
            client_secret=secret,
            resources=[resource_id],
            gateway_url=e2e.gateway_url,
        )
        try:
            async with caracal.session(labels=[ROLE], task="e2e-orchestrator") as parent:
                narrowed = Authority.narrow([READ], ttl_seconds=EDGE_TTL, resource_id=resource_id)
                async with caracal.session(labels=[ROLE], authority=narrowed) as child:
                    seen["child_row"] = admin.sessions.get(zone, child.session_id)
                    # 4. The delegated mint, and the narrowing holding at the STS.
                    seen["minted"] = caracal.mint_mandate(resource_id, [READ])
                    with pytest.raises(AccessDenied) as widened:
                        caracal.mint_mandate(resource_id, [WRITE])
                    seen["widened"] = widened.value
                    # 5. The gateway call (the library mints its own mandate for it).
                    seen["response"] = await caracal.fetch(
                        resource_id, PATH, scopes=[READ], transport=recording, timeout=30.0
                    )
                    spare = [caracal.mint_mandate(resource_id, [READ]).token for _ in range(SPARE_MANDATES)]
                    # 7. Revocation by the issuing application, then the refusals.
                    await caracal.revoke_delegation(child.delegation_id)
                    seen["revoked_row"] = admin.sessions.get(zone, child.session_id)
                    revoked_at = time.monotonic()
                    answers: list[httpx.Response] = []
                    for token in spare:
                        answer = await asyncio.to_thread(present, e2e, resource_id, token)
                        answers.append(answer)
                        if answer.status_code != 200 or time.monotonic() - revoked_at > REVOCATION_DEADLINE:
                            break
                        await asyncio.sleep(0.25)
                    seen["after"] = answers
                    with pytest.raises(AccessDenied) as refused:
                        await caracal.fetch(resource_id, PATH, scopes=[READ], ctx=child, timeout=30.0)
                    seen["refused"] = refused.value
                seen["parent_row"] = admin.sessions.get(zone, parent.session_id)
            seen.update(parent=parent, child=child)
        finally:
            await caracal.aclose()
        return seen

    seen = asyncio.run(scenario())
    parent: CaracalContext = seen["parent"]
    child: CaracalContext = seen["child"]

    # 3. The child: one hop below the parent, over a narrowed edge.
    assert child.delegation_id and child.hop == 1 and parent.delegation_id is None
    row = seen["child_row"]
    assert (row["parent_session_id"], row["depth"], row["status"]) == (parent.session_id, 1, "active"), row
    assert row["labels"] == [ROLE], row

    # 4. The delegated mandate.
    _, c = assert_mandate_shape(seen["minted"].token)
    assert (c["use"], c["scope"], c["target"]) == ("gateway", READ, [resource_id]), c
    assert (c["zone_id"], c["client_id"]) == (zone, app_id), c
    assert c["agent_session_id"] == c["target_session_id"] == child.session_id, c
    assert c["source_session_id"] == parent.session_id, c
    assert (c["delegation_edge_id"], c["hop_count"]) == (child.delegation_id, 1), c
    assert 0 < c["exp"] - c["iat"] <= EDGE_TTL, c
    widened: AccessDenied = seen["widened"]
    assert widened.http_status == 403, widened

    # 5. The gateway call: what the library sent, what the upstream saw.
    response: httpx.Response = seen["response"]
    assert response.status_code == 200, response.text
    request_id = response.headers.get("x-request-id")
    assert request_id, "the gateway answered without X-Request-Id"
    [sent] = recording.sent
    scheme, _, mandate = sent["authorization"].partition(" ")
    presented = claims_of(mandate)
    assert scheme == "Bearer" and presented["use"] == "gateway", presented
    assert (presented["agent_session_id"], presented["delegation_edge_id"]) == (child.session_id, child.delegation_id)
    trace_id = sent["traceparent"].split("-")[1]
    echo = response.json()
    assert (echo["method"], echo["path"]) == ("GET", upstream_base + PATH), echo
    received = echo["headers"]
    assert received.get(CREDENTIAL_HEADER) == e2e.upstream_credential, "the credential was not injected"
    assert "authorization" not in received, "the caller's Authorization reached the upstream"
    assert not [h for h in received if h.startswith("x-caracal-")], received
    assert received.get("x-request-id") == request_id, "the upstream sees the gateway's request id"
    assert received.get("traceparent", "").split("-")[1] == trace_id, "the library's trace continues upstream"
    signature = mandate.rsplit(".", 1)[-1]
    assert mandate not in response.text and signature not in response.text, "the upstream saw the mandate"

    # 6. The audit of that request, through the admin API and the audit service.
    items = audit_of_request(admin, zone, request_id, {"token_exchange", "gateway_resource_request"})
    by_type = {item["event_type"]: item for item in items}
    for item in items:
        assert (item["zone_id"], item["request_id"]) == (zone, request_id), item
        # Both record the decision of the activated version, about this mandate and trace.
        assert item["decision"] == "allow", item
        assert (item["policy_set_id"], item["policy_set_version_id"]) == (policy_set["id"], version["version_id"])
        assert item["manifest_sha"] == status["manifest_sha256"], item
        meta = item["metadata_json"]
        assert (meta["application_id"], meta["resource"]) == (app_id, resource_id), meta
        assert (meta["agent_session_id"], meta["delegation_edge_id"]) == (child.session_id, child.delegation_id)
        assert (meta["session_id"], meta["trace_id"]) == (presented["sid"], trace_id), meta
    assert by_type["token_exchange"]["metadata_json"]["exchange_class"] == "gateway_local"
    meta = by_type["gateway_resource_request"]["metadata_json"]
    assert (meta["method"], meta["gateway_status"], meta["upstream_status"]) == ("GET", 200, 200), meta
    assert (meta["auth_mode"], meta["provider_id"]) == ("provider_apikey", provider_id), meta
    # wire-contract §4: the first 8 bytes of SHA-256 of the bearer, in hex.
    assert meta["subject_fingerprint"] == hashlib.sha256(mandate.encode()).hexdigest()[:16], meta
    evidence = json.dumps(items)
    assert e2e.upstream_credential not in evidence, "the credential reached the audit ledger"
    assert mandate not in evidence and signature not in evidence, "the mandate reached the audit ledger"

    # 7. The revocation ended the child (not its parent) and both planes refuse it.
    revoked = seen["revoked_row"]
    assert (revoked["status"], revoked["termination_reason"]) == ("terminated", "delegation_revoked"), revoked
    assert seen["parent_row"]["status"] == "active", seen["parent_row"]
    after: list[httpx.Response] = seen["after"]
    last = after[-1]
    assert last.status_code in (401, 403), (
        f"a mandate of the revoked delegation still passed the gateway {REVOCATION_DEADLINE} s later "
        f"({len(after)} tries): {last.status_code}"
    )
    body = last.json()
    assert (last.status_code, body["error"]) in {(401, "invalid_token"), (403, "access_denied")}, body
    assert body.get("requestId") == last.headers.get("x-request-id"), body
    refused: AccessDenied = seen["refused"]
    assert refused.http_status == 403 and refused.request_id, refused
