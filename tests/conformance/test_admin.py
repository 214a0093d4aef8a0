"""The admin API driven by the real caracalai-admin 1.0 AdminClient (wire-contract.md §6):
zones, applications (and the ensure_application reconciler), policies, error codes as the
client reports them, and a token's capabilities."""

from __future__ import annotations

import uuid

import httpx
import pytest
from caracalai_admin import AdminApiError, AdminClient, ensure_application

VALID_DOCUMENT = (
    "package caracal.authz\nimport rego.v1\n# caracal:data-document\n"
    'app_ids := {"a": "app-1"}\n'
)


def unique(prefix: str) -> str:
    return f"{prefix}-{uuid.uuid4().hex[:10]}"


def test_zones_round_trip_and_report_the_catalog_codes(admin_client):
    slug = unique("conf")
    zone = admin_client.zones.create({"name": "Conformance zone", "slug": slug})
    assert zone["slug"] == slug and zone["id"]
    assert admin_client.zones.get(zone["id"])["name"] == "Conformance zone"
    assert any(z["id"] == zone["id"] for z in admin_client.zones.list())
    patched = admin_client.zones.patch(zone["id"], {"name": "Renamed"})
    assert patched["name"] == "Renamed"
    assert admin_client.zones.dcr_status(zone["id"])["dcr_enabled"] is False

    with pytest.raises(AdminApiError) as conflict:
        admin_client.zones.create({"name": "Again", "slug": slug})
    assert (conflict.value.status, conflict.value.code) == (409, "zone_slug_conflict")
    with pytest.raises(AdminApiError) as strict:
        admin_client.zones.create({"name": "x", "unknown": True})
    assert (strict.value.status, strict.value.code) == (400, "invalid_body")

    assert admin_client.zones.delete(zone["id"]) is None
    with pytest.raises(AdminApiError) as gone:
        admin_client.zones.get(zone["id"])
    assert (gone.value.status, gone.value.code) == (404, "zone_not_found")


def test_ensure_application_creates_then_converges_and_secrets_are_shown_once(admin_client):
    zone = admin_client.zones.create({"name": "Apps", "slug": unique("apps")})["id"]
    first = ensure_application(admin_client, zone, name="agent", traits=["control:invoke"], client_secret="chosen-secret-0001-abcdef")
    second = ensure_application(admin_client, zone, name="agent", traits=["control:invoke"], client_secret="chosen-secret-0001-abcdef")
    apps = admin_client.applications.list(zone)
    assert [a["name"] for a in apps] == ["agent"], "a second run converges on the same application"
    app_id = apps[0]["id"]
    for result in (first, second):
        if isinstance(result, dict) and "id" in result:
            assert result["id"] == app_id
    row = admin_client.applications.get(zone, app_id)
    assert row["registration_method"] == "managed" and row["expires_at"] is None
    assert "client_secret" not in row

    rotated = admin_client.applications.rotate_secret(zone, app_id)
    assert rotated["client_secret"].startswith("cs_") and len(rotated["client_secret"]) == 46
    with pytest.raises(AdminApiError) as hidden:
        admin_client.applications.get_client_secret(zone, app_id)
    assert (hidden.value.status, hidden.value.code) == (409, "client_secret_not_retrievable")
    with pytest.raises(AdminApiError) as taken:
        admin_client.applications.create(zone, {"name": "agent", "registration_method": "managed", "traits": []})
    assert (taken.value.status, taken.value.code) == (409, "application_name_taken")
    assert admin_client.applications.delete(zone, app_id) is None
    assert admin_client.applications.list(zone) == []


def test_policies_are_validated_versioned_and_hashed(admin_client):
    import hashlib

    zone = admin_client.zones.create({"name": "Policies", "slug": unique("pol")})["id"]
    created = admin_client.policies.create(zone, {"name": "grants", "content": VALID_DOCUMENT})
    assert created["version"] == 1 and created["version_id"]
    assert admin_client.policies.validate("package other\n")["valid"] is False
    assert admin_client.policies.validate(VALID_DOCUMENT)["valid"] is True
    second = VALID_DOCUMENT + "risk := []\n"
    added = admin_client.policies.add_version(zone, created["id"], second)
    assert added["version_id"]
    policy = admin_client.policies.get(zone, created["id"])
    newest = max(policy["versions"], key=lambda v: v["version"])
    assert newest["version"] == 2
    assert newest["content_sha256"] == hashlib.sha256(second.encode()).hexdigest()
    with pytest.raises(AdminApiError) as rejected:
        admin_client.policies.add_version(zone, created["id"], "package caracal.authz\nx := http.send({})\n")
    assert (rejected.value.status, rejected.value.code) == (422, "invalid_rego")


def test_a_read_token_reads_but_cannot_change(admin_env, admin_client):
    minted = httpx.post(
        f"{admin_env.api_url}/v1/admin-tokens",
        headers={"Authorization": f"Bearer {admin_env.token}"},
        json={"name": unique("reader"), "capability": "read"},
        timeout=30,
    )
    assert minted.status_code == 201, minted.text
    reader = AdminClient(api_url=admin_env.api_url, admin_token=minted.json()["token"])
    assert isinstance(reader.zones.list(), list)
    with pytest.raises(AdminApiError) as refused:
        reader.zones.create({"name": "nope"})
    assert (refused.value.status, refused.value.code) == (403, "admin_token_read_only")
    bad = AdminClient(api_url=admin_env.api_url, admin_token="not-a-token")
    with pytest.raises(AdminApiError) as unauthenticated:
        bad.zones.list()
    assert (unauthenticated.value.status, unauthenticated.value.code) == (401, "invalid_admin_token")


def test_full_provisioning_flow_reaches_loaded_and_the_application_mints(admin_client, make_exchanger):
    """wire-contract §8.2: provision zone → application → provider → resource → policy →
    policy set → activation with the real client, poll activation-status until `loaded`,
    then mint with caracalai-oauth as the new application."""
    import time

    from caracalai_admin import ResourceGrant, author_grants_document, provider_identifier

    slug = unique("flow")
    zone = admin_client.zones.create({"name": "Flow", "slug": slug})["id"]
    app = admin_client.applications.create(zone, {"name": "anton", "registration_method": "managed", "traits": []})
    provider = admin_client.providers.create(
        zone, {"name": "echo", "identifier": provider_identifier("echo"), "kind": "none"}
    )
    resource = admin_client.resources.create(
        zone,
        {
            "name": "pipernet",
            "identifier": "resource://pipernet",
            "upstream_url": "http://127.0.0.1:9/",
            "scopes": ["data:read"],
            "credential_provider_id": provider["id"],
            "operations": [{"method": "GET", "path": "/", "scope": "data:read"}],
            "operation_enforcement": "enforced",
        },
    )
    assert resource["identifier"] == "resource://pipernet"
    content = author_grants_document(
        [ResourceGrant(application_id=app["id"], resource_identifier=resource["identifier"], scopes=["data:read"])]
    )
    policy = admin_client.policies.create(zone, {"name": "application-grants", "content": content})
    policy_set = admin_client.policy_sets.create(zone, "application-grant-policy")
    version = admin_client.policy_sets.add_version(
        zone, policy_set["id"], [{"policy_version_id": policy["version_id"]}]
    )
    activation = admin_client.policy_sets.activate(zone, policy_set["id"], version["version_id"])
    assert activation["activated"] is True and activation["outbox_id"]

    deadline = time.monotonic() + 60
    while True:
        status = admin_client.policy_sets.activation_status(
            zone, policy_set["id"], version_id=activation["version_id"], outbox_id=activation["outbox_id"]
        )
        state = status["propagation_status"]
        if state == "loaded":
            break
        assert state != "failed", status
        assert time.monotonic() < deadline, f"activation did not load: {status}"
        time.sleep(0.25)

    exchanger = make_exchanger(
        zone_id=zone, app_id=app["id"], secret=app["client_secret"], resources=[resource["identifier"]]
    )
    assert exchanger.get_token().count(".") == 2
