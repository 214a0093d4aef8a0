"""Helpers shared by the conformance tests: settings read from the environment, JWT
inspection without verification, raw token-endpoint calls, and a local OIDC issuer
(JWKS over HTTP on 127.0.0.1 plus id_token signing with `cryptography`).

Nothing here talks to anything but the URLs the environment names and 127.0.0.1."""

from __future__ import annotations

import base64
import json
import os
import re
import threading
import time
import uuid
from dataclasses import dataclass
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import httpx
import pytest

GRANT_TYPE = "urn:ietf:params:oauth:grant-type:token-exchange"
ACCESS_TOKEN_TYPE = "urn:ietf:params:oauth:token-type:access_token"
ID_TOKEN_TYPE = "urn:ietf:params:oauth:token-type:id_token"
LIFECYCLE = "agent:lifecycle"
HTTP_TIMEOUT = 30.0

# Claims the STS never emits (wire-contract.md §3.2).
FORBIDDEN_CLAIMS = ("act", "cnf", "azp", "nbf", "typ", "token_type")


# --- settings ---------------------------------------------------------------------------


def _require_groups() -> set[str]:
    raw = os.environ.get("CONFORMANCE_REQUIRE", "")
    return {g.strip() for g in raw.split(",") if g.strip()}


def unavailable(group: str, missing: list[str]) -> None:
    """Skip (or fail, when CONFORMANCE_REQUIRE names the group or `all`) because the
    variables a test group needs are not set."""
    reason = f"[{group}] not configured: set {', '.join(missing)}"
    required = _require_groups()
    if group in required or "all" in required:
        pytest.fail(f"CONFORMANCE_REQUIRE includes {group!r} but {reason}", pytrace=False)
    pytest.skip(reason)


def env_values(group: str, names: list[str]) -> dict[str, str]:
    values = {n: os.environ.get(n, "").strip() for n in names}
    missing = [n for n, v in values.items() if not v]
    if missing:
        unavailable(group, missing)
    return values


def opt(name: str, default: str = "") -> str:
    return os.environ.get(name, "").strip() or default


def scope_list(raw: str) -> list[str]:
    return [s for s in re.split(r"[\s,]+", raw) if s]


@dataclass(frozen=True)
class Core:
    sts_url: str
    issuer: str
    zone_id: str
    app_id: str
    app_secret: str
    resource: str
    unknown_resource: str

    def form(self, **extra: str | list[str]) -> dict[str, str | list[str]]:
        """A valid bootstrap form, overridable field by field."""
        data: dict[str, str | list[str]] = {
            "grant_type": GRANT_TYPE,
            "zone_id": self.zone_id,
            "application_id": self.app_id,
            "client_secret": self.app_secret,
            "scope": LIFECYCLE,
            "resource": self.resource,
        }
        data.update(extra)
        return data


@dataclass(frozen=True)
class Delegated:
    resource: str
    scopes: list[str]
    agent_session_id: str
    delegation_edge_id: str
    source_session_id: str
    issuer_app_id: str
    edge_ttl_cap: int | None


@dataclass(frozen=True)
class CoordinatorEnv:
    """The Coordinator under test and the application that drives it (group `coordinator`)."""

    url: str
    operator_token: str
    app_id: str
    app_secret: str
    resource: str
    # The scopes the application's role grants on `resource`; the first is the narrowed
    # slice a child receives, the others are what the narrowing withholds.
    scopes: list[str]
    # Session labels that carry that role in the zone's grants document.
    labels: list[str]
    # A session mandate of another zone, signed with a key the STS publishes for it, whose
    # scope lacks agent:lifecycle.
    no_lifecycle_token: str


@dataclass(frozen=True)
class CoordinatorRevokeEnv:
    """A throwaway application whose authority the subject kill switch revokes (group
    `coordinator_revoke`)."""

    app_id: str
    app_secret: str
    resource: str


@dataclass(frozen=True)
class GatewayEnv:
    """The gateway under test and the declared operation of the coordinator resource."""

    url: str
    path: str
    upstream_path: str


@dataclass(frozen=True)
class StreamsEnv:
    """The Redis the Coordinator publishes its revocation streams to, and their HMAC key."""

    redis_url: str
    hmac_key: bytes


@dataclass(frozen=True)
class EndToEndEnv:
    """A whole stack on one Redis database and one Postgres database (group `e2e`): the
    test provisions everything itself through the admin API."""

    api_url: str
    admin_token: str
    sts_url: str
    coordinator_url: str
    coordinator_token: str
    gateway_url: str
    # The recording echo upstream the test's resource points at (with a base path).
    upstream_url: str
    # The credential the test seals into its provider; the upstream must receive it.
    upstream_credential: str


# --- JWT inspection ---------------------------------------------------------------------


def b64url_decode(segment: str) -> bytes:
    return base64.urlsafe_b64decode(segment + "=" * (-len(segment) % 4))


def b64url(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode("ascii")


def jwt_parts(token: str) -> tuple[dict, dict, bytes]:
    parts = token.split(".")
    assert len(parts) == 3, f"not a compact JWS: {token[:40]}…"
    for p in parts:
        assert re.fullmatch(r"[A-Za-z0-9_-]+", p), "JWS segment is not unpadded base64url"
    header = json.loads(b64url_decode(parts[0]))
    claims = json.loads(b64url_decode(parts[1]))
    assert isinstance(header, dict) and isinstance(claims, dict)
    return header, claims, b64url_decode(parts[2])


def claims_of(token: str) -> dict:
    return jwt_parts(token)[1]


def assert_mandate_shape(token: str) -> tuple[dict, dict]:
    """The structural rules of wire-contract.md §3.1–3.2 that hold for every mandate."""
    assert len(token) <= 4096, f"mandate is {len(token)} bytes, over the 4096-byte limit"
    header, claims, sig = jwt_parts(token)
    assert header.get("alg") == "ES256" and header.get("typ") == "JWT", header
    assert isinstance(header.get("kid"), str) and header["kid"], header
    assert set(header) == {"alg", "kid", "typ"}, f"unexpected header fields: {header}"
    assert len(sig) == 64, f"ES256 signature must be raw R||S (64 bytes), got {len(sig)}"
    for name in FORBIDDEN_CLAIMS:
        assert name not in claims, f"claim {name!r} must never be emitted"
    for name, value in claims.items():
        assert value is not None, f"claim {name!r} is null"
        assert value != [], f"claim {name!r} is an empty array"
    assert claims.get("scope", None) != "", "scope must be omitted, never empty"
    for name in ("exp", "iat"):
        assert type(claims.get(name)) is int, f"{name} must be an integer: {claims.get(name)!r}"
    assert isinstance(claims.get("aud"), list), f"aud must be an array: {claims.get('aud')!r}"
    assert uuid.UUID(claims["jti"]).version == 7, f"jti must be a UUIDv7: {claims['jti']}"
    for name in ("zone_id", "client_id"):
        assert re.fullmatch(r"[A-Za-z0-9._:-]{1,128}", claims.get(name, "")), (name, claims)
    for name in ("sub", "sid", "root_sid", "use", "sub_type"):
        assert isinstance(claims.get(name), str) and claims[name], (name, claims)
    assert claims["iat"] <= time.time() + 60, "iat is in the future"
    return header, claims


# --- raw HTTP ---------------------------------------------------------------------------


def token_url(sts_url: str) -> str:
    return f"{sts_url.rstrip('/')}/oauth/2/token"


def post_token(sts_url: str, data=None, *, query: str = "", **kwargs) -> httpx.Response:
    url = token_url(sts_url) + (f"?{query}" if query else "")
    with httpx.Client(timeout=HTTP_TIMEOUT) as client:
        return client.post(url, data=data, **kwargs)


def assert_error_body(
    resp: httpx.Response, status: int, code: str, extra_keys: tuple[str, ...] = ()
) -> dict:
    """wire-contract.md §1.2: STS error body, content type and request id echo."""
    assert resp.status_code == status, f"expected {status} {code}, got {resp.status_code}: {resp.text}"
    assert resp.headers.get("content-type", "").split(";")[0].strip() == "application/json"
    body = resp.json()
    assert body.get("error") == code, body
    assert set(body) <= {"error", "error_description", "requestId", *extra_keys}, body
    rid = resp.headers.get("x-request-id")
    assert rid, "X-Request-Id response header missing"
    assert body.get("requestId") == rid, f"requestId {body.get('requestId')!r} != X-Request-Id {rid!r}"
    return body


def coordinator_call(
    base_url: str,
    method: str,
    path: str,
    bearer: str | None,
    *,
    json_body: dict | None = None,
    headers: dict[str, str] | None = None,
) -> httpx.Response:
    """One raw Coordinator request (the library hides statuses and headers); `bearer=None`
    sends no Authorization header."""
    sent = dict(headers or {})
    if bearer is not None:
        sent["authorization"] = f"Bearer {bearer}"
    with httpx.Client(timeout=HTTP_TIMEOUT) as client:
        return client.request(method, base_url.rstrip("/") + path, json=json_body, headers=sent)


# --- local OIDC issuer for federation ---------------------------------------------------


class LocalIssuer:
    """Serves a JWKS at http://127.0.0.1:<port><path> and signs id_tokens with its key."""

    def __init__(self, port: int, path: str, alg: str) -> None:
        from cryptography.hazmat.primitives.asymmetric import ec, rsa

        if alg not in ("RS256", "ES256"):
            raise ValueError(f"CONFORMANCE_FEDERATION_ALG must be RS256 or ES256, not {alg}")
        self.alg = alg
        self.path = path
        self.kid = f"conformance-{uuid.uuid4()}"
        if alg == "RS256":
            self._key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
        else:
            self._key = ec.generate_private_key(ec.SECP256R1())
        self.fetches = 0
        issuer = self

        class Handler(BaseHTTPRequestHandler):
            def do_GET(self) -> None:  # noqa: N802 (http.server API)
                if self.path.split("?", 1)[0] != issuer.path:
                    self.send_error(404)
                    return
                issuer.fetches += 1
                body = json.dumps({"keys": [issuer.public_jwk()]}).encode()
                self.send_response(200)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

            def log_message(self, *args) -> None:
                pass

        self._server = ThreadingHTTPServer(("127.0.0.1", port), Handler)
        self._thread = threading.Thread(target=self._server.serve_forever, daemon=True)

    def __enter__(self) -> "LocalIssuer":
        self._thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self._server.shutdown()
        self._server.server_close()

    def public_jwk(self, key=None) -> dict:
        pub = (key or self._key).public_key().public_numbers()
        if self.alg == "RS256":
            n = pub.n.to_bytes((pub.n.bit_length() + 7) // 8, "big")
            e = pub.e.to_bytes((pub.e.bit_length() + 7) // 8, "big")
            return {"kty": "RSA", "use": "sig", "alg": "RS256", "kid": self.kid, "n": b64url(n), "e": b64url(e)}
        return {
            "kty": "EC", "crv": "P-256", "use": "sig", "alg": "ES256", "kid": self.kid,
            "x": b64url(pub.x.to_bytes(32, "big")), "y": b64url(pub.y.to_bytes(32, "big")),
        }

    def sign(self, claims: dict, *, key=None, kid: str | None = None) -> str:
        from cryptography.hazmat.primitives import hashes
        from cryptography.hazmat.primitives.asymmetric import ec, padding
        from cryptography.hazmat.primitives.asymmetric.utils import decode_dss_signature

        key = key or self._key
        header = {"alg": self.alg, "kid": kid or self.kid, "typ": "JWT"}
        signing_input = (
            b64url(json.dumps(header, separators=(",", ":")).encode())
            + "."
            + b64url(json.dumps(claims, separators=(",", ":"), ensure_ascii=False).encode())
        ).encode("ascii")
        if self.alg == "RS256":
            sig = key.sign(signing_input, padding.PKCS1v15(), hashes.SHA256())
        else:
            r, s = decode_dss_signature(key.sign(signing_input, ec.ECDSA(hashes.SHA256())))
            sig = r.to_bytes(32, "big") + s.to_bytes(32, "big")
        return signing_input.decode("ascii") + "." + b64url(sig)

    def other_key(self):
        from cryptography.hazmat.primitives.asymmetric import ec, rsa

        if self.alg == "RS256":
            return rsa.generate_private_key(public_exponent=65537, key_size=2048)
        return ec.generate_private_key(ec.SECP256R1())
