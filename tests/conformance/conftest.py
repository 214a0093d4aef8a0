"""Fixtures for the conformance suite. Every fixture reads its CONFORMANCE_* variables
(README.md lists them) and skips the test when they are absent, or fails it when
CONFORMANCE_REQUIRE names the group."""

from __future__ import annotations

import contextlib
from dataclasses import dataclass

import pytest
from caracalai_oauth import ClientCredentials, ClientSecretExchanger

from conformance_support import (
    Core,
    CoordinatorEnv,
    CoordinatorRevokeEnv,
    Delegated,
    EndToEndEnv,
    GatewayEnv,
    StreamsEnv,
    env_values,
    opt,
    scope_list,
)


@pytest.fixture(scope="session")
def core() -> Core:
    v = env_values(
        "core",
        [
            "CONFORMANCE_STS_URL",
            "CONFORMANCE_ZONE_ID",
            "CONFORMANCE_APP_ID",
            "CONFORMANCE_APP_SECRET",
            "CONFORMANCE_RESOURCE",
        ],
    )
    sts = v["CONFORMANCE_STS_URL"].rstrip("/")
    return Core(
        sts_url=sts,
        issuer=opt("CONFORMANCE_ISSUER", sts),
        zone_id=v["CONFORMANCE_ZONE_ID"],
        app_id=v["CONFORMANCE_APP_ID"],
        app_secret=v["CONFORMANCE_APP_SECRET"],
        resource=v["CONFORMANCE_RESOURCE"],
        unknown_resource=opt("CONFORMANCE_UNKNOWN_RESOURCE", "resource://conformance-not-registered"),
    )


@pytest.fixture(scope="session")
def delegated(core: Core) -> Delegated:
    v = env_values(
        "delegated",
        [
            "CONFORMANCE_DELEGATED_RESOURCE",
            "CONFORMANCE_DELEGATED_SCOPES",
            "CONFORMANCE_AGENT_SESSION_ID",
            "CONFORMANCE_DELEGATION_EDGE_ID",
        ],
    )
    cap = opt("CONFORMANCE_EDGE_TTL_CAP")
    return Delegated(
        resource=v["CONFORMANCE_DELEGATED_RESOURCE"],
        scopes=scope_list(v["CONFORMANCE_DELEGATED_SCOPES"]),
        agent_session_id=v["CONFORMANCE_AGENT_SESSION_ID"],
        delegation_edge_id=v["CONFORMANCE_DELEGATION_EDGE_ID"],
        source_session_id=opt("CONFORMANCE_SOURCE_SESSION_ID"),
        issuer_app_id=opt("CONFORMANCE_ISSUER_APP_ID", core.app_id),
        edge_ttl_cap=int(cap) if cap else None,
    )


@pytest.fixture(scope="session")
def other_zone_id(core: Core) -> str:
    return env_values("zone", ["CONFORMANCE_OTHER_ZONE_ID"])["CONFORMANCE_OTHER_ZONE_ID"]


@dataclass(frozen=True)
class Approval:
    resource: str
    scopes: list[str]
    agent_session_id: str
    delegation_edge_id: str


@pytest.fixture(scope="session")
def approval(core: Core) -> Approval:
    v = env_values("approval", ["CONFORMANCE_APPROVAL_RESOURCE", "CONFORMANCE_APPROVAL_SCOPES"])
    session = opt("CONFORMANCE_APPROVAL_AGENT_SESSION_ID", opt("CONFORMANCE_AGENT_SESSION_ID"))
    edge = opt("CONFORMANCE_APPROVAL_DELEGATION_EDGE_ID", opt("CONFORMANCE_DELEGATION_EDGE_ID"))
    if not session or not edge:
        env_values(
            "approval",
            ["CONFORMANCE_APPROVAL_AGENT_SESSION_ID", "CONFORMANCE_APPROVAL_DELEGATION_EDGE_ID"],
        )
    return Approval(
        resource=v["CONFORMANCE_APPROVAL_RESOURCE"],
        scopes=scope_list(v["CONFORMANCE_APPROVAL_SCOPES"]),
        agent_session_id=session,
        delegation_edge_id=edge,
    )


@dataclass(frozen=True)
class Federation:
    port: int
    issuer: str
    audience: str
    jwks_path: str
    alg: str


@pytest.fixture(scope="session")
def federation(core: Core) -> Federation:
    v = env_values(
        "federation", ["CONFORMANCE_FEDERATION_ISSUER_PORT", "CONFORMANCE_FEDERATION_AUDIENCE"]
    )
    port = int(v["CONFORMANCE_FEDERATION_ISSUER_PORT"])
    return Federation(
        port=port,
        issuer=opt("CONFORMANCE_FEDERATION_ISSUER", f"http://127.0.0.1:{port}"),
        audience=v["CONFORMANCE_FEDERATION_AUDIENCE"],
        jwks_path=opt("CONFORMANCE_FEDERATION_JWKS_PATH", "/jwks.json"),
        alg=opt("CONFORMANCE_FEDERATION_ALG", "RS256"),
    )


@dataclass(frozen=True)
class Control:
    app_id: str
    app_secret: str
    scopes: list[str]
    audience: str
    zone_id: str


@pytest.fixture(scope="session")
def control(core: Core) -> Control:
    v = env_values(
        "control",
        ["CONFORMANCE_CONTROL_APP_ID", "CONFORMANCE_CONTROL_APP_SECRET", "CONFORMANCE_CONTROL_SCOPES"],
    )
    return Control(
        app_id=v["CONFORMANCE_CONTROL_APP_ID"],
        app_secret=v["CONFORMANCE_CONTROL_APP_SECRET"],
        scopes=scope_list(v["CONFORMANCE_CONTROL_SCOPES"]),
        audience=opt("CONFORMANCE_CONTROL_AUDIENCE", "caracal-control"),
        zone_id=opt("CONFORMANCE_CONTROL_ZONE_ID", core.zone_id),
    )


@pytest.fixture(scope="session")
def ratelimit_app(core: Core) -> tuple[str, str]:
    v = env_values("ratelimit", ["CONFORMANCE_RATELIMIT_APP_ID", "CONFORMANCE_RATELIMIT_APP_SECRET"])
    return v["CONFORMANCE_RATELIMIT_APP_ID"], v["CONFORMANCE_RATELIMIT_APP_SECRET"]


@pytest.fixture(scope="session")
def unavailable_sts_url(core: Core) -> str:
    return env_values("unavailable", ["CONFORMANCE_STS_UNAVAILABLE_URL"])[
        "CONFORMANCE_STS_UNAVAILABLE_URL"
    ].rstrip("/")


@pytest.fixture
def make_exchanger(core: Core):
    """Builds ClientSecretExchangers against the STS under test; closes them afterwards.
    Each call gets a fresh exchanger, so no library cache is shared between tests."""
    with contextlib.ExitStack() as stack:

        def make(
            *,
            zone_id: str | None = None,
            app_id: str | None = None,
            secret: str | None = None,
            resources: list[str] | None = None,
            sts_url: str | None = None,
            http_client=None,
        ) -> ClientSecretExchanger:
            creds = ClientCredentials(
                zone_id=zone_id or core.zone_id,
                application_id=app_id or core.app_id,
                client_secret=secret or core.app_secret,
            )
            ex = ClientSecretExchanger(
                sts_url=sts_url or core.sts_url,
                credentials=lambda: creds,
                resources=resources if resources is not None else [core.resource],
                http_client=http_client,
            )
            stack.callback(ex.close)
            return ex

        yield make


@dataclass(frozen=True)
class Admin:
    api_url: str
    token: str


@pytest.fixture(scope="session")
def admin_env() -> Admin:
    v = env_values("admin", ["CONFORMANCE_API_URL", "CONFORMANCE_ADMIN_TOKEN"])
    return Admin(api_url=v["CONFORMANCE_API_URL"].rstrip("/"), token=v["CONFORMANCE_ADMIN_TOKEN"])


@pytest.fixture
def admin_client(admin_env: Admin):
    """The real caracalai-admin 1.0 AdminClient against our API, closed afterwards."""
    from caracalai_admin import AdminClient

    client = AdminClient(api_url=admin_env.api_url, admin_token=admin_env.token)
    try:
        yield client
    finally:
        close = getattr(client, "close", None)
        if callable(close):
            close()


@pytest.fixture(scope="session")
def coordinator(core: Core) -> CoordinatorEnv:
    v = env_values(
        "coordinator",
        [
            "CONFORMANCE_COORDINATOR_URL",
            "CONFORMANCE_COORDINATOR_TOKEN",
            "CONFORMANCE_COORDINATOR_APP_ID",
            "CONFORMANCE_COORDINATOR_APP_SECRET",
            "CONFORMANCE_COORDINATOR_RESOURCE",
            "CONFORMANCE_COORDINATOR_SCOPES",
            "CONFORMANCE_COORDINATOR_LABELS",
            "CONFORMANCE_COORDINATOR_NO_LIFECYCLE_TOKEN",
        ],
    )
    scopes = scope_list(v["CONFORMANCE_COORDINATOR_SCOPES"])
    if len(scopes) < 2:
        pytest.fail("CONFORMANCE_COORDINATOR_SCOPES needs at least two scopes", pytrace=False)
    return CoordinatorEnv(
        url=v["CONFORMANCE_COORDINATOR_URL"].rstrip("/"),
        operator_token=v["CONFORMANCE_COORDINATOR_TOKEN"],
        app_id=v["CONFORMANCE_COORDINATOR_APP_ID"],
        app_secret=v["CONFORMANCE_COORDINATOR_APP_SECRET"],
        resource=v["CONFORMANCE_COORDINATOR_RESOURCE"],
        scopes=scopes,
        labels=scope_list(v["CONFORMANCE_COORDINATOR_LABELS"]),
        no_lifecycle_token=v["CONFORMANCE_COORDINATOR_NO_LIFECYCLE_TOKEN"],
    )


@pytest.fixture(scope="session")
def coordinator_revoke(coordinator: CoordinatorEnv) -> CoordinatorRevokeEnv:
    v = env_values(
        "coordinator_revoke",
        [
            "CONFORMANCE_COORDINATOR_REVOKE_APP_ID",
            "CONFORMANCE_COORDINATOR_REVOKE_APP_SECRET",
            "CONFORMANCE_COORDINATOR_REVOKE_RESOURCE",
        ],
    )
    return CoordinatorRevokeEnv(
        app_id=v["CONFORMANCE_COORDINATOR_REVOKE_APP_ID"],
        app_secret=v["CONFORMANCE_COORDINATOR_REVOKE_APP_SECRET"],
        resource=v["CONFORMANCE_COORDINATOR_REVOKE_RESOURCE"],
    )


@pytest.fixture(scope="session")
def gateway(coordinator: CoordinatorEnv) -> GatewayEnv:
    v = env_values("gateway", ["CONFORMANCE_GATEWAY_URL", "CONFORMANCE_GATEWAY_PATH"])
    path = v["CONFORMANCE_GATEWAY_PATH"]
    return GatewayEnv(
        url=v["CONFORMANCE_GATEWAY_URL"].rstrip("/"),
        path=path,
        upstream_path=opt("CONFORMANCE_GATEWAY_UPSTREAM_PATH", path),
    )


@pytest.fixture(scope="session")
def streams(coordinator: CoordinatorEnv) -> StreamsEnv:
    v = env_values("streams", ["CONFORMANCE_STREAMS_REDIS_URL", "CONFORMANCE_STREAMS_HMAC_KEY"])
    return StreamsEnv(
        redis_url=v["CONFORMANCE_STREAMS_REDIS_URL"],
        hmac_key=bytes.fromhex(v["CONFORMANCE_STREAMS_HMAC_KEY"]),
    )


@pytest.fixture
def operator(core: Core, coordinator: CoordinatorEnv):
    """The real caracalai-admin 1.0 AdminClient for the Coordinator's operator views (its
    session and delegation reads go to the Coordinator with the operator token; its API
    base is unused by them), closed afterwards."""
    from caracalai_admin import AdminClient

    client = AdminClient(
        api_url=opt("CONFORMANCE_API_URL", coordinator.url),
        admin_token=opt("CONFORMANCE_ADMIN_TOKEN", coordinator.operator_token),
        coordinator_url=coordinator.url,
        coordinator_token=coordinator.operator_token,
    )
    try:
        yield client
    finally:
        close = getattr(client, "close", None)
        if callable(close):
            close()


@pytest.fixture(scope="session")
def e2e() -> EndToEndEnv:
    """The stack of group `e2e`; independent of the other groups' variables."""
    v = env_values(
        "e2e",
        [
            "CONFORMANCE_E2E_API_URL",
            "CONFORMANCE_E2E_ADMIN_TOKEN",
            "CONFORMANCE_E2E_STS_URL",
            "CONFORMANCE_E2E_COORDINATOR_URL",
            "CONFORMANCE_E2E_COORDINATOR_TOKEN",
            "CONFORMANCE_E2E_GATEWAY_URL",
            "CONFORMANCE_E2E_UPSTREAM_URL",
            "CONFORMANCE_E2E_UPSTREAM_CREDENTIAL",
        ],
    )
    return EndToEndEnv(
        api_url=v["CONFORMANCE_E2E_API_URL"].rstrip("/"),
        admin_token=v["CONFORMANCE_E2E_ADMIN_TOKEN"],
        sts_url=v["CONFORMANCE_E2E_STS_URL"].rstrip("/"),
        coordinator_url=v["CONFORMANCE_E2E_COORDINATOR_URL"].rstrip("/"),
        coordinator_token=v["CONFORMANCE_E2E_COORDINATOR_TOKEN"],
        gateway_url=v["CONFORMANCE_E2E_GATEWAY_URL"].rstrip("/"),
        upstream_url=v["CONFORMANCE_E2E_UPSTREAM_URL"].rstrip("/"),
        upstream_credential=v["CONFORMANCE_E2E_UPSTREAM_CREDENTIAL"],
    )
