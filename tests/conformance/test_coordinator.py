"""The Coordinator (wire-contract.md §7) driven by the real caracalai 1.0 SDK: governed
sessions and their children, narrowed delegations and the delegated mints they allow at our
STS, service leases with generation fencing, idempotent starts, and the bearer refusals of
§7.1. With the gateway group, a child calls through our gateway and is refused there once
its session ends (the issue's end-to-end story).

Every session a test starts ends inside the test; the operator views (AdminClient with the
Coordinator token) read the rows back from Postgres."""

from __future__ import annotations

import asyncio
import contextlib
import time
import uuid
from collections.abc import AsyncIterator, Coroutine
from datetime import datetime
from typing import Any, TypeVar

import httpx
import pytest
import redis
from caracalai import (
    AccessDenied,
    Authority,
    Caracal,
    CaracalContext,
    CaracalEvent,
    CoordinatorError,
    DelegationConstraints,
)
from caracalai.advanced import from_env
from caracalai.coordinator import (
    CoordinatorClient,
    StartSessionRequest,
    start_coordinator_session,
)
from caracalai_admin import AdminClient
from caracalai_identity import ChainHop, Claims
from caracalai_oauth import ClientCredentials, ClientSecretExchanger
from caracalai_revocation_redis import (
    RedisDelegationInvalidationConsumer,
    RedisRevocationConsumer,
    RedisRevocationStore,
)
from caracalai_verify import check_active_authority

from conformance_support import (
    Core,
    CoordinatorEnv,
    CoordinatorRevokeEnv,
    GatewayEnv,
    StreamsEnv,
    assert_mandate_shape,
    claims_of,
    coordinator_call,
)

T = TypeVar("T")

# The start answer's fields (wire-contract.md §7.3).
START_FIELDS = {
    "agent_session_id", "zone_id", "application_id", "parent_id",
    "subject_authority_record_id", "lifecycle", "labels", "status", "depth", "ttl_seconds",
    "started_at", "last_heartbeat_at", "heartbeat_deadline_at", "lease_generation",
    "delegation_edge_id",
}
# An edge the narrowing allows lives this long; it also caps the mandates minted through it.
EDGE_TTL = 600
# How long a terminated session may still pass the gateway (streams, then the poll), and how
# long the Coordinator's outbox may take to publish a change.
GATEWAY_REVOCATION_DEADLINE = 5.0
PUBLISH_DEADLINE = 5.0


def run(coro: Coroutine[Any, Any, T]) -> T:
    return asyncio.run(coro)


@contextlib.asynccontextmanager
async def sdk(
    core: Core,
    coordinator: CoordinatorEnv,
    *,
    app_id: str | None = None,
    secret: str | None = None,
    resource: str | None = None,
    gateway_url: str | None = None,
) -> AsyncIterator[tuple[Caracal, list[CaracalEvent]]]:
    """A `Caracal.from_client_secret` client of the coordinator application (or another),
    with every event it emits recorded; closed (and its transports' sessions retired) on
    exit, so the events of the close are in the list afterwards."""
    caracal = Caracal.from_client_secret(
        coordinator_url=coordinator.url,
        sts_url=core.sts_url,
        zone_id=core.zone_id,
        application_id=app_id or coordinator.app_id,
        client_secret=secret or coordinator.app_secret,
        resources=[resource or coordinator.resource],
        gateway_url=gateway_url,
    )
    events: list[CaracalEvent] = []
    caracal.on_event(events.append)
    try:
        yield caracal, events
    finally:
        await caracal.aclose()


def calls(events: list[CaracalEvent], method: str, path: str) -> list[CaracalEvent]:
    """The Coordinator calls the SDK reported, by method and exact path."""
    return [e for e in events if e.type == "coordinator.call" and e.method == method and e.path == path]


def bootstrap_token(core: Core, coordinator: CoordinatorEnv) -> str:
    """A fresh bootstrap (`use=session`, `agent:lifecycle`) mandate of the application."""
    creds = ClientCredentials(
        zone_id=core.zone_id, application_id=coordinator.app_id, client_secret=coordinator.app_secret
    )
    exchanger = ClientSecretExchanger(
        sts_url=core.sts_url, credentials=lambda: creds, resources=[coordinator.resource]
    )
    try:
        return exchanger.get_token()
    finally:
        exchanger.close()


def deadline(value: str | None) -> datetime:
    assert value, "heartbeat_deadline_at missing"
    return datetime.fromisoformat(value)


def assert_refusal(err: CoordinatorError, status: int, code: str) -> None:
    """A Coordinator refusal as the library reports it (§7.2): status, `error`, request id."""
    assert (err.status, err.code) == (status, code), f"{err.status} {err.code}: {err.body}"
    assert err.request_id, "the refusal carries no request id"


def agents_path(zone: str, session_id: str | None = None) -> str:
    return f"/zones/{zone}/agents" + (f"/{session_id}" if session_id else "")


# --- sessions -----------------------------------------------------------------------------


def test_session_context_starts_201_and_terminates_204(
    core: Core, coordinator: CoordinatorEnv, operator: AdminClient
) -> None:
    async def scenario() -> tuple[CaracalContext, dict, list[CaracalEvent]]:
        async with sdk(core, coordinator) as (caracal, events):
            async with caracal.session(task="conformance", labels=coordinator.labels) as ctx:
                live = operator.sessions.get(core.zone_id, ctx.session_id)
        return ctx, live, events

    ctx, live, events = run(scenario())
    assert ctx.session_id and ctx.delegation_id is None and ctx.hop == 0
    assert (ctx.zone_id, ctx.application_id) == (core.zone_id, coordinator.app_id)

    # The row as the operator reads it (AdminClient renames agent_session_id and parent_id).
    assert live["session_id"] == ctx.session_id and live["status"] == "active"
    assert live["parent_session_id"] is None and live["depth"] == 0
    assert live["lifecycle"] == "task" and live["labels"] == coordinator.labels
    assert live["metadata"] == {"task": "conformance"}
    assert live["authority_record_id"] == claims_of(ctx.subject_token)["sid"], (
        "a session without subject_session_id runs under the bearer's authority record"
    )

    [start] = calls(events, "POST", agents_path(core.zone_id))
    assert (start.ok, start.status, start.replayed) == (True, 201, False)
    [end] = calls(events, "DELETE", agents_path(core.zone_id, ctx.session_id))
    assert (end.ok, end.status) == (True, 204)
    ended = operator.sessions.get(core.zone_id, ctx.session_id)
    assert ended["status"] == "terminated" and ended["terminated_at"]


def test_from_env_session_context(core: Core, coordinator: CoordinatorEnv, operator: AdminClient) -> None:
    caracal = from_env(
        {
            "CARACAL_COORDINATOR_URL": coordinator.url,
            "CARACAL_STS_URL": core.sts_url,
            "CARACAL_ZONE_ID": core.zone_id,
            "CARACAL_APPLICATION_ID": coordinator.app_id,
            "CARACAL_APP_CLIENT_SECRET": coordinator.app_secret,
            "CARACAL_APP_RESOURCES": coordinator.resource,
        }
    )

    async def scenario() -> str:
        try:
            async with caracal.session() as ctx:
                assert operator.sessions.get(core.zone_id, ctx.session_id)["status"] == "active"
                return ctx.session_id
        finally:
            await caracal.aclose()

    session_id = run(scenario())
    assert operator.sessions.get(core.zone_id, session_id)["status"] == "terminated"


def test_start_answers_every_field_and_replays_by_idempotency_key(core: Core, coordinator: CoordinatorEnv) -> None:
    bearer = bootstrap_token(core, coordinator)
    path = agents_path(core.zone_id)
    key = f"conformance-{uuid.uuid4()}"
    body = {"application_id": coordinator.app_id, "labels": coordinator.labels, "metadata": {"task": "replay"}}

    def keyed_start() -> httpx.Response:
        headers = {"idempotency-key": key}
        return coordinator_call(coordinator.url, "POST", path, bearer, json_body=body, headers=headers)

    first = keyed_start()
    assert first.status_code == 201, first.text
    assert first.headers["content-type"].split(";")[0] == "application/json"
    assert first.headers.get("x-request-id")
    assert "idempotency-replayed" not in first.headers
    s = first.json()
    assert START_FIELDS <= set(s), f"missing {START_FIELDS - set(s)}"
    assert type(s["lease_generation"]) is int and s["lease_generation"] == 0, "a task session has generation 0"
    assert (s["zone_id"], s["application_id"]) == (core.zone_id, coordinator.app_id)
    assert (s["status"], s["lifecycle"], s["depth"], s["ttl_seconds"]) == ("active", "task", 0, 3600)
    assert s["parent_id"] is None and s["delegation_edge_id"] is None
    assert s["heartbeat_deadline_at"] is None and s["labels"] == coordinator.labels
    assert s["subject_authority_record_id"] == claims_of(bearer)["sid"]

    replay = keyed_start()
    assert replay.status_code == 201, replay.text
    assert replay.headers.get("idempotency-replayed") == "true"
    assert replay.json() == s, "a replay answers the stored body"

    async def through_the_library() -> tuple[str, list[CaracalEvent], CoordinatorError]:
        events: list[CaracalEvent] = []
        client = CoordinatorClient(base_url=coordinator.url, on_event=events.append)
        request = StartSessionRequest(
            zone_id=core.zone_id,
            application_id=coordinator.app_id,
            labels=coordinator.labels,
            metadata={"task": "replay"},
            idempotency_key=key,
        )
        try:
            replayed = await start_coordinator_session(client, bearer, request)
            request.labels = [*coordinator.labels, "changed"]
            with pytest.raises(CoordinatorError) as conflict:
                await start_coordinator_session(client, bearer, request)
        finally:
            await client.aclose()
        return replayed.session_id, events, conflict.value

    replayed_id, events, conflict = run(through_the_library())
    assert replayed_id == s["agent_session_id"]
    assert [e.replayed for e in events] == [True, False], "the library sees Idempotency-Replayed"
    assert_refusal(conflict, 409, "idempotency_key_conflict")

    ended = coordinator_call(coordinator.url, "DELETE", agents_path(core.zone_id, s["agent_session_id"]), bearer)
    assert ended.status_code == 204 and ended.content == b"", ended.text
    inactive = keyed_start()
    assert inactive.status_code == 409 and inactive.json()["error"] == "idempotency_result_inactive", inactive.text
    unknown = coordinator_call(coordinator.url, "DELETE", agents_path(core.zone_id, str(uuid.uuid4())), bearer)
    assert unknown.status_code == 404 and unknown.json()["error"] == "session_not_found", unknown.text


def test_service_session_heartbeat_lease_and_fencing(
    core: Core, coordinator: CoordinatorEnv, operator: AdminClient
) -> None:
    async def scenario() -> tuple[str, list[CaracalEvent]]:
        async with sdk(core, coordinator) as (caracal, events):
            first = await caracal.start_session(labels=coordinator.labels, heartbeat_interval=0)
            session_id = first.session_id
            assert first.lease_generation == 1, "a service session starts at generation 1"
            started = deadline(first.heartbeat_deadline_at)
            await asyncio.sleep(0.05)
            await first.heartbeat()
            assert deadline(first.heartbeat_deadline_at) > started, "a heartbeat renews the lease"
            assert first.status == "active"

            # Another holder takes the lease (a restarted worker re-attaching): generation 2.
            second = await caracal.attach_session(session_id, heartbeat_interval=0)
            assert second.lease_generation == 2
            with pytest.raises(CoordinatorError) as fenced:
                await first.heartbeat()
            assert_refusal(fenced.value, 409, "session_lease_fenced")
            await second.heartbeat()

            # Terminate rules for a service session (§7.3), seen raw.
            bearer = await caracal.config.asubject_token()
            path = agents_path(core.zone_id, session_id)
            bare = coordinator_call(coordinator.url, "DELETE", path, bearer)
            assert bare.status_code == 400 and bare.json()["error"] == "lease_generation_required", bare.text
            stale = coordinator_call(coordinator.url, "DELETE", path, bearer, json_body={"lease_generation": 1})
            assert stale.status_code == 409 and stale.json()["error"] == "session_lease_fenced", stale.text
            row = operator.sessions.get(core.zone_id, session_id)
            assert (row["status"], row["lifecycle"], row["lease_generation"]) == ("active", "service", 2)

            # The fenced holder's close counts the session as gone and leaves it running; the
            # current holder's close ends it.
            await first.aclose()
            assert operator.sessions.get(core.zone_id, session_id)["status"] == "active"
            await second.aclose()
        return session_id, events

    session_id, events = run(scenario())
    path = agents_path(core.zone_id, session_id)
    [start] = calls(events, "POST", agents_path(core.zone_id))
    assert start.status == 201
    assert [e.status for e in calls(events, "POST", f"{path}/lease")] == [200]
    assert [e.status for e in calls(events, "POST", f"{path}/heartbeat")] == [200, 409, 200]
    assert [(e.status, e.code) for e in calls(events, "DELETE", path)] == [
        (409, "session_lease_fenced"),
        (204, ""),
    ]
    assert operator.sessions.get(core.zone_id, session_id)["status"] == "terminated"


# --- children and delegations ---------------------------------------------------------------


def test_narrowed_child_mints_at_the_sts_until_it_is_terminated(
    core: Core, coordinator: CoordinatorEnv, operator: AdminClient
) -> None:
    narrow, withheld = coordinator.scopes[0], coordinator.scopes[1]

    async def scenario() -> dict[str, Any]:
        seen: dict[str, Any] = {}
        async with sdk(core, coordinator) as (caracal, events):
            async with caracal.session(labels=coordinator.labels, task="orchestrator") as parent:
                async with caracal.session(
                    labels=coordinator.labels,
                    authority=Authority.narrow([narrow], ttl_seconds=EDGE_TTL, resource_id=coordinator.resource),
                ) as child:
                    seen["minted"] = caracal.mint_mandate(coordinator.resource, [narrow])
                    with pytest.raises(AccessDenied) as widened:
                        caracal.mint_mandate(coordinator.resource, [withheld])
                    seen["widened"] = widened.value
                    seen["child_row"] = operator.sessions.get(core.zone_id, child.session_id)
                    seen["authority"] = operator.sessions.effective_authority(core.zone_id, child.session_id)
                seen["ended_child"] = operator.sessions.get(core.zone_id, child.session_id)
                seen["live_parent"] = operator.sessions.get(core.zone_id, parent.session_id)
                with pytest.raises(AccessDenied) as refused:
                    caracal.mint_mandate(coordinator.resource, [narrow], ctx=child)
                seen["refused"] = refused.value
            seen.update(parent=parent, child=child, events=list(events))
        seen["ended_parent"] = operator.sessions.get(core.zone_id, parent.session_id)
        return seen

    seen = run(scenario())
    parent: CaracalContext = seen["parent"]
    child: CaracalContext = seen["child"]
    assert parent.delegation_id is None
    assert child.delegation_id and child.parent_delegation_id is None and child.hop == 1

    # The child was started delegation-less (parent_authority=none), then given the edge.
    child_row = seen["child_row"]
    assert child_row["parent_session_id"] == parent.session_id and child_row["depth"] == 1
    assert child_row["status"] == "active"
    [delegated] = calls(seen["events"], "POST", f"/zones/{core.zone_id}/delegations")
    assert (delegated.ok, delegated.status) == (True, 201)
    authority = seen["authority"]
    assert [e["id"] for e in authority["inbound_delegations"]] == [child.delegation_id]
    assert authority["effective_scopes"] == [narrow]
    assert coordinator.resource in authority["effective_resources"]
    assert authority["effective_ttl_seconds"] == EDGE_TTL

    # The delegated mint at our STS: a gateway mandate over the coordinator-made edge.
    _, c = assert_mandate_shape(seen["minted"].token)
    assert (c["use"], c["scope"], c["target"]) == ("gateway", narrow, [coordinator.resource])
    assert (c["client_id"], c["sub"]) == (coordinator.app_id, coordinator.app_id)
    assert c["agent_session_id"] == c["target_session_id"] == child.session_id
    assert c["source_session_id"] == parent.session_id
    assert c["delegation_edge_id"] == child.delegation_id
    assert c["delegation_path"] == [child.delegation_id] and c["hop_count"] == 1
    assert c["delegation_chain"] == [
        {"application_id": coordinator.app_id, "agent_session_id": parent.session_id,
         "delegation_edge_id": child.delegation_id},
        {"application_id": coordinator.app_id, "agent_session_id": child.session_id},
    ]
    assert 0 < c["exp"] - c["iat"] <= EDGE_TTL, "the edge's ttl_seconds caps the mandate"

    widened: AccessDenied = seen["widened"]
    assert widened.http_status == 403
    assert widened.description == "requested scopes exceed delegation scopes"

    # Terminating the child revoked its edge: the next delegated mint is refused.
    assert seen["ended_child"]["status"] == "terminated"
    assert seen["live_parent"]["status"] == "active", "ending a child leaves its parent running"
    refused: AccessDenied = seen["refused"]
    assert refused.http_status == 403 and refused.request_id
    assert refused.description == "delegation edge inactive or expired"
    assert seen["ended_parent"]["status"] == "terminated"


def test_inherited_edge_is_surfaced_and_an_exhausted_one_refused(
    core: Core, coordinator: CoordinatorEnv, operator: AdminClient
) -> None:
    narrow = coordinator.scopes[0]

    async def scenario() -> dict[str, Any]:
        seen: dict[str, Any] = {}
        async with sdk(core, coordinator) as (caracal, events):
            async with caracal.session(labels=coordinator.labels) as parent:
                async with caracal.session(
                    labels=coordinator.labels,
                    authority=Authority.narrow(
                        [narrow],
                        ttl_seconds=EDGE_TTL,
                        resource_id=coordinator.resource,
                        constraints=DelegationConstraints(max_hops=2),
                    ),
                ) as child:
                    # Default authority: the Coordinator copies the child's edge onto the
                    # grandchild with one hop less and answers its id.
                    async with caracal.session(labels=coordinator.labels) as grandchild:
                        seen["minted"] = caracal.mint_mandate(coordinator.resource, [narrow])
                        seen["authority"] = operator.sessions.effective_authority(
                            core.zone_id, grandchild.session_id
                        )
                        # The copy allows no further hop: inheriting it is refused, never
                        # silently skipped (settled point 9).
                        with pytest.raises(CoordinatorError) as exhausted:
                            async with caracal.session(labels=coordinator.labels):
                                pass
                        seen["exhausted"] = exhausted.value
                        seen["great_grandchildren"] = operator.sessions.children(
                            core.zone_id, grandchild.session_id
                        )
                    # parent_authority=none: a sibling that holds nothing.
                    async with caracal.session(labels=coordinator.labels, authority=Authority.none()) as loose:
                        seen["loose"] = loose
                        seen["loose_authority"] = operator.sessions.effective_authority(
                            core.zone_id, loose.session_id
                        )
            seen.update(parent=parent, child=child, grandchild=grandchild)
        return seen

    seen = run(scenario())
    parent, child, grandchild = seen["parent"], seen["child"], seen["grandchild"]
    inherited = grandchild.delegation_id
    assert inherited and inherited != child.delegation_id
    assert grandchild.parent_delegation_id == child.delegation_id and grandchild.hop == 2
    inbound = seen["authority"]["inbound_delegations"]
    assert [e["id"] for e in inbound] == [inherited]
    assert inbound[0]["parent_edge_id"] == child.delegation_id
    assert inbound[0]["source_session_id"] == child.session_id
    assert inbound[0]["constraints_json"]["max_hops"] == 1
    assert seen["authority"]["effective_scopes"] == [narrow]

    c = claims_of(seen["minted"].token)
    assert c["use"] == "gateway" and c["agent_session_id"] == grandchild.session_id
    assert c["delegation_edge_id"] == inherited
    assert c["delegation_path"] == [child.delegation_id, inherited] and c["hop_count"] == 2
    assert [hop["agent_session_id"] for hop in c["delegation_chain"]] == [
        parent.session_id,
        child.session_id,
        grandchild.session_id,
    ]

    assert_refusal(seen["exhausted"], 409, "inherit_parent_edge_exhausted")
    assert seen["great_grandchildren"] == [], "a refused start leaves no session behind"

    loose: CaracalContext = seen["loose"]
    assert loose.delegation_id is None
    assert seen["loose_authority"]["inbound_delegations"] == []
    assert seen["loose_authority"]["effective_scopes"] == []


def test_peer_delegation_is_accepted_then_revoked(
    core: Core, coordinator: CoordinatorEnv, operator: AdminClient
) -> None:
    narrow = coordinator.scopes[0]

    async def scenario() -> dict[str, Any]:
        seen: dict[str, Any] = {}
        async with sdk(core, coordinator) as (caracal, events):
            # A peer that outlives a block (a root service session), and an issuer beside it.
            receiver = await caracal.start_session(labels=coordinator.labels, heartbeat_interval=0)
            async with caracal.session(labels=coordinator.labels) as issuer:
                granted = await caracal.delegate(
                    to_session_id=receiver.session_id,
                    scopes=[narrow],
                    ttl_seconds=EDGE_TTL,
                    resource_id=coordinator.resource,
                )
                async with caracal.bind(receiver.context):
                    async with caracal.accept_delegation(granted.delegation_id, validate=True) as accepted:
                        seen["accepted"] = accepted
                        seen["minted"] = caracal.mint_mandate(coordinator.resource, [narrow])
                await caracal.revoke_delegation(granted.delegation_id)
                seen["receiver_row"] = operator.sessions.get(core.zone_id, receiver.session_id)
                seen["issuer_row"] = operator.sessions.get(core.zone_id, issuer.session_id)
                async with caracal.bind(receiver.context):
                    with pytest.raises(RuntimeError) as gone:
                        async with caracal.accept_delegation(granted.delegation_id, validate=True):
                            pass
                    seen["gone"] = gone.value
            await receiver.aclose()
            seen.update(issuer=issuer, receiver=receiver.context, granted=granted, events=list(events))
        return seen

    seen = run(scenario())
    issuer, receiver, granted = seen["issuer"], seen["receiver"], seen["granted"]
    assert granted.delegation_id and granted.scopes == (narrow,) and granted.expires_at
    accepted: CaracalContext = seen["accepted"]
    assert accepted.delegation_id == granted.delegation_id and accepted.session_id == receiver.session_id

    c = claims_of(seen["minted"].token)
    assert (c["use"], c["delegation_edge_id"]) == ("gateway", granted.delegation_id)
    assert (c["source_session_id"], c["target_session_id"]) == (issuer.session_id, receiver.session_id)

    events = seen["events"]
    inbound_one = f"/zones/{core.zone_id}/delegations/inbound/{receiver.session_id}/{granted.delegation_id}"
    validations = [(e.status, e.code) for e in calls(events, "GET", inbound_one)]
    assert validations == [(200, ""), (404, "delegation_not_found")]
    revoke = f"/zones/{core.zone_id}/delegations/{granted.delegation_id}/revoke"
    assert [e.status for e in calls(events, "PATCH", revoke)] == [200]
    assert isinstance(seen["gone"].__cause__, CoordinatorError)

    # Revoking an edge terminates its target's subtree, never its source.
    row = seen["receiver_row"]
    assert (row["status"], row["termination_reason"]) == ("terminated", "delegation_revoked")
    assert seen["issuer_row"]["status"] == "active"


def test_operator_suspends_and_resumes_a_subtree(
    core: Core, coordinator: CoordinatorEnv, operator: AdminClient
) -> None:
    narrow = coordinator.scopes[0]

    async def scenario() -> dict[str, Any]:
        seen: dict[str, Any] = {}
        async with sdk(core, coordinator) as (caracal, _events):
            async with caracal.session(labels=coordinator.labels) as parent:
                async with caracal.session(
                    labels=coordinator.labels,
                    authority=Authority.narrow([narrow], ttl_seconds=EDGE_TTL, resource_id=coordinator.resource),
                ) as child:
                    tree = (parent.session_id, child.session_id)
                    seen["suspended"] = operator.sessions.suspend(core.zone_id, parent.session_id)
                    seen["suspended_rows"] = [operator.sessions.get(core.zone_id, s)["status"] for s in tree]
                    with pytest.raises(AccessDenied) as held:
                        caracal.mint_mandate(coordinator.resource, [narrow])
                    seen["held"] = held.value
                    seen["resumed"] = operator.sessions.resume(core.zone_id, parent.session_id)
                    seen["resumed_rows"] = [operator.sessions.get(core.zone_id, s)["status"] for s in tree]
                    seen["minted"] = caracal.mint_mandate(coordinator.resource, [narrow])
        return seen

    seen = run(scenario())
    assert seen["suspended"] == {"suspended": 2}, "the parent and its child"
    assert seen["suspended_rows"] == ["suspended", "suspended"]
    held: AccessDenied = seen["held"]
    assert held.http_status == 403
    assert held.description in (
        "delegation source inactive or expired",
        "delegation target inactive or unauthorized",
    )
    assert seen["resumed"] == {"resumed": 2}
    assert seen["resumed_rows"] == ["active", "active"]
    assert claims_of(seen["minted"].token)["use"] == "gateway", "suspension keeps the edges"


def test_health_and_ready(coordinator: CoordinatorEnv) -> None:
    with httpx.Client(timeout=30.0) as client:
        health = client.get(coordinator.url + "/health")
        ready = client.get(coordinator.url + "/ready")
    assert health.status_code == 200 and health.content == b""
    assert ready.status_code == 200 and ready.json() == {"ok": True, "ready": True}


# --- §7.1 refusals ----------------------------------------------------------------------------


def test_bearer_refusals(core: Core, coordinator: CoordinatorEnv) -> None:
    narrow = coordinator.scopes[0]
    request = StartSessionRequest(zone_id=core.zone_id, application_id=coordinator.app_id)

    async def start(bearer: str, req: StartSessionRequest = request) -> CoordinatorError:
        client = CoordinatorClient(base_url=coordinator.url)
        try:
            with pytest.raises(CoordinatorError) as refused:
                await start_coordinator_session(client, bearer, req)
            return refused.value
        finally:
            await client.aclose()

    async def gateway_mandate() -> str:
        async with sdk(core, coordinator) as (caracal, _events):
            async with caracal.session(labels=coordinator.labels):
                async with caracal.session(
                    labels=coordinator.labels,
                    authority=Authority.narrow([narrow], ttl_seconds=EDGE_TTL, resource_id=coordinator.resource),
                ):
                    return caracal.mint_mandate(coordinator.resource, [narrow]).token

    # No bearer, another scheme, and one over 4096 bytes (an empty bearer cannot be sent:
    # h11 refuses the header value "Bearer ").
    for headers in ({}, {"authorization": "Basic Y29uZm9ybWFuY2U6eA=="}):
        raw = coordinator_call(coordinator.url, "POST", agents_path(core.zone_id), None,
                               json_body={"application_id": coordinator.app_id}, headers=headers)
        assert raw.status_code == 401 and raw.json()["error"] == "missing_token", raw.text
        assert raw.json().get("request_id") == raw.headers.get("x-request-id")
    assert_refusal(run(start("x" * 4097)), 401, "missing_token")

    # Not a JWT; a gateway mandate of the zone (valid signature, use=gateway).
    assert_refusal(run(start("not-a-mandate")), 401, "invalid_token")
    gateway_token = run(gateway_mandate())
    assert claims_of(gateway_token)["use"] == "gateway"
    assert_refusal(run(start(gateway_token)), 401, "invalid_token")

    # A valid session mandate whose scope lacks agent:lifecycle.
    signed = claims_of(coordinator.no_lifecycle_token)
    assert "agent:lifecycle" not in signed.get("scope", "").split()
    other = StartSessionRequest(zone_id=signed["zone_id"], application_id=signed["client_id"])
    assert_refusal(run(start(coordinator.no_lifecycle_token, other)), 403, "missing_scope")

    # A valid bootstrap mandate of this zone on another zone's path.
    bearer = bootstrap_token(core, coordinator)
    elsewhere = StartSessionRequest(zone_id=f"{core.zone_id}-elsewhere", application_id=coordinator.app_id)
    assert_refusal(run(start(bearer, elsewhere)), 403, "zone_mismatch")


def test_identity_revoked_after_subject_revoke(
    core: Core,
    coordinator: CoordinatorEnv,
    coordinator_revoke: CoordinatorRevokeEnv,
    admin_client: AdminClient,
    operator: AdminClient,
) -> None:
    app = coordinator_revoke

    async def scenario() -> dict[str, Any]:
        seen: dict[str, Any] = {}
        async with sdk(core, coordinator, app_id=app.app_id, secret=app.app_secret, resource=app.resource) as (
            caracal,
            _events,
        ):
            bearer = await caracal.config.asubject_token()
            client = CoordinatorClient(base_url=coordinator.url)
            request = StartSessionRequest(zone_id=core.zone_id, application_id=app.app_id)
            try:
                started = await start_coordinator_session(client, bearer, request)
                seen["row"] = operator.sessions.get(core.zone_id, started.session_id)
                seen["summary"] = admin_client.subjects.revoke(
                    core.zone_id, {"subject_id": app.app_id, "reason": "conformance"}
                )
                seen["ended"] = operator.sessions.get(core.zone_id, started.session_id)
                with pytest.raises(CoordinatorError) as revoked:
                    await start_coordinator_session(client, bearer, request)
                seen["revoked"] = revoked.value
            finally:
                await client.aclose()
            # The library answers a 401 by refreshing its credential once and retrying.
            async with caracal.session() as recovered:
                seen["recovered"] = recovered
            seen["bearer"] = bearer
        return seen

    seen = run(scenario())
    assert seen["row"]["authority_record_id"] == claims_of(seen["bearer"])["sid"]
    summary = seen["summary"]
    assert summary["revoked_authority_records"] >= 1 and summary["terminated_sessions"] >= 1, summary
    assert seen["ended"]["status"] == "terminated", "the kill switch ends the sessions bound to the subject"
    assert_refusal(seen["revoked"], 401, "identity_revoked")
    recovered: CaracalContext = seen["recovered"]
    assert claims_of(recovered.subject_token)["sid"] != claims_of(seen["bearer"])["sid"]


# --- through the gateway ----------------------------------------------------------------------


def test_child_calls_through_the_gateway_until_its_session_ends(
    core: Core, coordinator: CoordinatorEnv, gateway: GatewayEnv, operator: AdminClient
) -> None:
    narrow = coordinator.scopes[0]

    def call(token: str) -> httpx.Response:
        with httpx.Client(timeout=30.0) as client:
            return client.get(
                gateway.url + gateway.path,
                headers={"Authorization": f"Bearer {token}", "X-Caracal-Resource": coordinator.resource},
            )

    async def scenario() -> dict[str, Any]:
        seen: dict[str, Any] = {}
        async with sdk(core, coordinator, gateway_url=gateway.url) as (caracal, _events):
            async with caracal.session(labels=coordinator.labels):
                async with caracal.session(
                    labels=coordinator.labels,
                    authority=Authority.narrow([narrow], ttl_seconds=EDGE_TTL, resource_id=coordinator.resource),
                ) as child:
                    seen["response"] = await caracal.fetch(coordinator.resource, gateway.path, scopes=[narrow])
                    # Mandates minted while the child lives, presented after it ended.
                    spare = [caracal.mint_mandate(coordinator.resource, [narrow]).token for _ in range(8)]
                assert operator.sessions.get(core.zone_id, child.session_id)["status"] == "terminated"
                ended_at = time.monotonic()
                for token in spare:
                    answer = call(token)
                    if answer.status_code != 200 or time.monotonic() - ended_at > GATEWAY_REVOCATION_DEADLINE:
                        break
                    await asyncio.sleep(0.25)
                seen["after"] = answer
                with pytest.raises(AccessDenied) as refused:
                    await caracal.fetch(coordinator.resource, gateway.path, scopes=[narrow], ctx=child)
                seen["refused"] = refused.value
        return seen

    seen = run(scenario())
    response: httpx.Response = seen["response"]
    assert response.status_code == 200, response.text
    assert response.headers.get("x-request-id")
    assert int(response.headers["x-caracal-token-expires-in"]) > 0
    echo = response.json()
    assert (echo["method"], echo["path"]) == ("GET", gateway.upstream_path)

    after: httpx.Response = seen["after"]
    assert after.status_code in (401, 403), (
        f"a terminated session's mandate still passed {GATEWAY_REVOCATION_DEADLINE} s later: {after.status_code}"
    )
    body = after.json()
    assert (after.status_code, body["error"]) in {(401, "invalid_token"), (403, "access_denied")}, body
    assert body.get("requestId") == after.headers.get("x-request-id")
    assert seen["refused"].http_status == 403


def test_application_transport_provisions_once_and_mints_per_request(
    core: Core, coordinator: CoordinatorEnv, gateway: GatewayEnv
) -> None:
    narrow = coordinator.scopes[0]

    async def scenario() -> tuple[list[httpx.Response], list[CaracalEvent]]:
        async with sdk(core, coordinator, gateway_url=gateway.url) as (caracal, events):
            async with caracal.application_transport(
                coordinator.resource, scopes=[narrow], labels=coordinator.labels
            ) as client:
                responses = [await client.get(gateway.url + gateway.path) for _ in range(2)]
        return responses, events

    responses, events = run(scenario())
    for response in responses:
        assert response.status_code == 200, response.text
        assert response.json()["path"] == gateway.upstream_path
    assert responses[0].headers["x-request-id"] != responses[1].headers["x-request-id"]

    starts = calls(events, "POST", agents_path(core.zone_id))
    assert [e.status for e in starts] == [201, 201], "one source and one target session"
    assert [e.status for e in calls(events, "POST", f"/zones/{core.zone_id}/delegations")] == [201]
    ends = [e for e in events if e.type == "coordinator.call" and e.method == "DELETE"]
    assert sorted(e.status for e in ends) == [204, 204], "closing the client retires both sessions"
    delegated = [e for e in events if e.type == "token.exchange" and tuple(e.scopes) == (narrow,)]
    assert len(delegated) == 2 and not any(e.cached for e in delegated), "one fresh mandate per request"


# --- revocation streams -----------------------------------------------------------------------


def library_claims(token: str) -> Claims:
    """A mandate's claims as caracalai_identity types them (for check_active_authority)."""
    c = claims_of(token)
    return Claims(
        sub=c["sub"], zone_id=c["zone_id"], client_id=c["client_id"],
        authority_record_id=c["sid"], root_authority_record_id=c["root_sid"],
        use=c["use"], sub_type=c["sub_type"], jti=c["jti"], scope=c.get("scope", ""),
        issued_at=c["iat"], expires_at=c["exp"], target_resources=c.get("target", []),
        session_id=c.get("agent_session_id"), delegation_id=c.get("delegation_edge_id"),
        source_session_id=c.get("source_session_id"), target_session_id=c.get("target_session_id"),
        delegation_path=c.get("delegation_path", []),
        delegation_chain=[
            ChainHop(hop["application_id"], hop.get("agent_session_id"), hop.get("delegation_edge_id"))
            for hop in c.get("delegation_chain", [])
        ],
        graph_epoch=c.get("delegation_graph_epoch"), hop_count=c.get("hop_count"),
    )


def test_terminate_and_revoke_publish_signed_messages_the_library_applies(
    core: Core, coordinator: CoordinatorEnv, streams: StreamsEnv, operator: AdminClient
) -> None:
    narrow = coordinator.scopes[0]
    client = redis.Redis.from_url(streams.redis_url, decode_responses=True)
    run_id = uuid.uuid4().hex[:12]
    # A store and consumer groups of this test's own: the groups start at the beginning of
    # each stream, so every message published so far must verify too.
    store = RedisRevocationStore(client, key_prefix=f"conformance:{run_id}:revoked:")
    groups = {
        "caracal.sessions.revoke": f"conformance-revocation-{run_id}",
        "caracal.delegations.invalidate": f"conformance-invalidation-{run_id}",
    }
    consumers = [
        RedisRevocationConsumer(
            client, store, "conformance", stream="caracal.sessions.revoke",
            group=groups["caracal.sessions.revoke"], block_ms=50, stream_hmac_key=streams.hmac_key,
        ),
        RedisDelegationInvalidationConsumer(
            client, store, "conformance", stream="caracal.delegations.invalidate",
            group=groups["caracal.delegations.invalidate"], block_ms=50, stream_hmac_key=streams.hmac_key,
        ),
    ]
    dead = ("caracal.sessions.revoke.dead", "caracal.delegations.invalidate.dead")
    dead_before = [client.xlen(name) for name in dead]
    for consumer in consumers:
        consumer.ensure_group()

    def drain_until(*anchors: str) -> bool:
        """Runs the consumers until the store holds every anchor (the outbox publishes
        asynchronously, one message per anchor set)."""
        until = time.monotonic() + PUBLISH_DEADLINE
        while time.monotonic() < until:
            for consumer in consumers:
                consumer.poll_once()
            if all(store.is_revoked(anchor) for anchor in anchors):
                return True
        return False

    narrowed = Authority.narrow([narrow], ttl_seconds=EDGE_TTL, resource_id=coordinator.resource)

    async def scenario() -> dict[str, Any]:
        seen: dict[str, Any] = {}
        async with sdk(core, coordinator) as (caracal, _events):
            async with caracal.session(labels=coordinator.labels) as parent:
                async with caracal.session(labels=coordinator.labels, authority=narrowed) as ended:
                    seen["ended_token"] = caracal.mint_mandate(coordinator.resource, [narrow]).token
                seen["terminated_seen"] = drain_until(ended.session_id)
                seen["parent_revoked"] = store.is_revoked(parent.session_id)

                async with caracal.session(labels=coordinator.labels, authority=narrowed) as cut:
                    seen["cut_token"] = caracal.mint_mandate(coordinator.resource, [narrow]).token
                    seen["revoke"] = operator.delegations.revoke(core.zone_id, cut.delegation_id)
                    seen["revoked_seen"] = drain_until(cut.delegation_id, cut.session_id)
            seen.update(parent=parent, ended=ended, cut=cut)
        return seen

    try:
        seen = run(scenario())
        epoch = store.current_delegation_epoch(core.zone_id)
        dead_after = [client.xlen(name) for name in dead]
    finally:
        for stream, group in groups.items():
            client.xgroup_destroy(stream, group)
        client.close()

    # Terminate: the ended session is an anchor, its parent is not.
    assert seen["terminated_seen"], f"no verified revocation of the terminated session within {PUBLISH_DEADLINE} s"
    assert seen["parent_revoked"] is False
    ended_claims = library_claims(seen["ended_token"])
    refusal = check_active_authority(ended_claims, store)
    assert refusal is not None and refusal.code == "session_revoked", refusal

    # Delegation revoke: the edge and its target are anchors; the counts as AdminClient reads them.
    assert seen["revoke"]["revoked_delegations"] == 1, seen["revoke"]
    assert seen["revoke"]["affected_sessions"] == seen["revoke"]["terminated_sessions"] == 1
    assert seen["revoked_seen"], f"no verified revocation of the edge and its target within {PUBLISH_DEADLINE} s"
    refusal = check_active_authority(library_claims(seen["cut_token"]), store)
    assert refusal is not None and refusal.code == "session_revoked", refusal

    # Every edge change bumped the zone epoch past what the mandates carry.
    assert epoch > claims_of(seen["cut_token"])["delegation_graph_epoch"], epoch
    assert dead_after == dead_before, "a Coordinator message failed the library's checks (dead letters)"
