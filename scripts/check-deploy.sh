#!/usr/bin/env bash
# Checks the deployment assets in deploy/ against the code, without Docker, Helm or a cluster.
# Safe in CI: it reads files and runs local validators only.
#
#   scripts/check-deploy.sh                        # every check
#   CHECK_DEPLOY_INSTALL=1 scripts/check-deploy.sh # may fetch promtool (Debian's prometheus .deb)
#   CHECK_DEPLOY_DIR=/tmp/copy scripts/check-deploy.sh  # check another copy of deploy/
#
# What it checks (each failure prints one line `check-deploy: FAIL <area>: <what>`):
#   metrics     every caracal_* name in the alert rules, their tests and the dashboard is one
#               the Rust sources export (literal names, and names the code composes from a
#               prefix and a suffix list, such as caracal_api_outbox_pending)
#   yaml/json   every YAML file parses (Helm templates excepted), the dashboard parses
#   rules       rule structure (unique names, severity, summary, description, `for`), the
#               alerts storage-and-events.md §9.5 names; promtool check/test when installed,
#               and every dashboard query through promtool's parser
#   dashboard   unique panel ids, layout inside 24 columns, a query in every panel
#   compose     the services, images, Redis flags, /ready healthchecks on each role's port,
#               env names each role's code reads, *_FILE paths that match mounted secrets,
#               least privilege of secrets, migrate ordering, replay volumes per producer
#   helm        template syntax (braces, block ends, defined includes), every .Values path
#               exists in values.yaml, env and secret-key names the roles read, HPA, PDB,
#               migrate hook, probes, non-root read-only pods, no inline Secret
#   systemd     env names per role, every *_FILE credential is loaded, hardening present,
#               `systemd-analyze verify` clean when available
#   image       the Dockerfile's base images, locked release build, non-root numeric user
set -uo pipefail

root="$(cd "$(dirname "$0")/.." && pwd)"
deploy="${CHECK_DEPLOY_DIR:-$root/deploy}"
failures=0

fail() {
    echo "check-deploy: FAIL $*"
    failures=$((failures + 1))
}

if [[ ! -d "$deploy" ]]; then
    echo "check-deploy: FAIL setup: no directory $deploy"
    exit 1
fi

# A Python with PyYAML: the toolchain's python3, else Debian's (python3-yaml). Without one, the
# YAML-structure checks are skipped with a message and every other check still runs.
python=""
for candidate in python3 /usr/bin/python3; do
    if command -v "$candidate" >/dev/null 2>&1 && "$candidate" -c 'import yaml' 2>/dev/null; then
        python="$candidate"
        break
    fi
done
yaml_available=1
if [[ -z "$python" ]]; then
    yaml_available=0
    python="$(command -v python3 || true)"
    if [[ -z "$python" ]]; then
        echo "check-deploy: FAIL setup: python3 is required"
        exit 1
    fi
    echo "check-deploy: note: PyYAML is not importable; YAML parsing and structure checks are skipped"
fi

# --- The checks that read files: one Python program, one line per failure. ---------------
py_out="$("$python" - "$root" "$deploy" "$yaml_available" <<'PY'
import json
import os
import re
import sys

root, deploy, yaml_available = sys.argv[1], sys.argv[2], sys.argv[3] == "1"
if yaml_available:
    import yaml

failures = []


def fail(area, what):
    failures.append(f"{area}: {what}")


def read(path):
    with open(path, encoding="utf-8") as f:
        return f.read()


def rel(path):
    return os.path.relpath(path, deploy)


# --- The Rust sources, without tests. ----------------------------------------------------
SOURCE_DIRS = ["control", "gateway", "src"]
SKIP_PARTS = {"tests", "fuzz", "benches", "target"}


def product_sources():
    """(relative path, text) of every non-test .rs file; inline test modules cut off."""
    out = []
    for top in SOURCE_DIRS:
        for dirpath, dirnames, filenames in os.walk(os.path.join(root, top)):
            dirnames[:] = [d for d in dirnames if d not in SKIP_PARTS]
            for name in filenames:
                if not name.endswith(".rs") or name == "tests.rs":
                    continue
                path = os.path.join(dirpath, name)
                text = read(path)
                cut = text.find("#[cfg(test)]")
                if cut >= 0:
                    text = text[:cut]
                out.append((os.path.relpath(path, root), text))
    return out


SOURCES = product_sources()


def skip_literal(text, i):
    """Index just past the string, raw string or char literal starting at text[i]."""
    if text.startswith("r#", i) or text.startswith('r"', i):
        hashes = 0
        j = i + 1
        while text[j] == "#":
            hashes += 1
            j += 1
        end = text.find('"' + "#" * hashes, j + 1)
        return len(text) if end < 0 else end + 1 + hashes
    if text[i] == '"':
        j = i + 1
        while j < len(text):
            if text[j] == "\\":
                j += 2
                continue
            if text[j] == '"':
                return j + 1
            j += 1
        return len(text)
    # A char literal ('x', '\n', '{'); anything else is a lifetime.
    m = re.match(r"'(\\.[^']*|[^'\\])'", text[i:])
    return i + m.end() if m else i + 1


def function_bodies(text):
    """(name, body) of every `fn` in a file, matching braces outside literals and comments."""
    bodies = []
    for m in re.finditer(r"\bfn\s+(\w+)", text):
        i = text.find("{", m.end())
        semi = text.find(";", m.end())
        if i < 0 or (0 <= semi < i):
            continue
        depth, j = 0, i
        while j < len(text):
            c = text[j]
            if text.startswith("//", j):
                j = text.find("\n", j)
                j = len(text) if j < 0 else j
                continue
            if text.startswith("/*", j):
                j = text.find("*/", j)
                j = len(text) if j < 0 else j + 2
                continue
            if c == '"' or c == "'" or ((c == "r") and re.match(r'r#*"', text[j:j + 3] or "")
                                         and not re.match(r"\w", text[j - 1])):
                j = skip_literal(text, j)
                continue
            if c == "{":
                depth += 1
            elif c == "}":
                depth -= 1
                if depth == 0:
                    bodies.append((m.group(1), text[i:j + 1]))
                    break
            j += 1
    return bodies


SUFFIX = re.compile(r'"([a-z][a-z0-9]*(?:_[a-z0-9]+)+)"')


def exported_metric_names():
    names = set()
    composers = {}
    for path, text in SOURCES:
        names.update(re.findall(r"\bcaracal_[a-z0-9_]*[a-z0-9]\b", text))
        for fn, body in function_bodies(text):
            suffixes = set(SUFFIX.findall(body))
            # A name built from a literal prefix: format!("…caracal_coordinator_{name}…").
            for prefix in re.findall(r"(caracal_[a-z0-9_]*[a-z0-9])_\{\w+\}", body):
                names.update(f"{prefix}_{s}" for s in suffixes)
            # A name built from a prefix argument: format!("{prefix}_{name}").
            if re.search(r"\{prefix\}_\{\w+\}", body):
                composers.setdefault(fn, set()).update(suffixes)
    for path, text in SOURCES:
        for fn, suffixes in composers.items():
            for prefix in re.findall(rf"\b{fn}\(\s*\"(caracal_[a-z0-9_]+)\"", text):
                names.update(f"{prefix}_{s}" for s in suffixes)
    return names


METRICS = exported_metric_names()

# --- Environment variables each role reads. ----------------------------------------------
LIB_DIRS = ["control/model", "control/crypto", "control/store", "control/events",
            "control/http", "control/policy"]
ROLE_DIRS = {
    "sts": ["control/sts"],
    "api": ["control/api", "gateway/plugin-host"],
    "coordinator": ["control/coordinator"],
    "gateway": ["gateway/proxy", "gateway/state", "gateway/plugin-host"],
    "audit": ["control/audit"],
    "migrate": ["control/ops", "src"],
}
ROLES = ["sts", "api", "coordinator", "gateway", "audit"]
# Read by libraries outside our sources: tracing's filter, libpq-style clients (sqlx, pg_dump).
EXTERNAL_ENV = {"RUST_LOG", "RUST_BACKTRACE", "PGPASSFILE", "PGPASSWORD", "PGSSLMODE",
                "PGSSLROOTCERT"}
# Secrets a role has no use for (least privilege); `_FILE` forms included.
FORBIDDEN = {
    "sts": {"CARACAL_ADMIN_TOKEN", "CARACAL_INTERNAL_TOKEN", "CARACAL_COORDINATOR_TOKEN"},
    "api": {"CARACAL_COORDINATOR_TOKEN"},
    "coordinator": {"ZONE_KEK", "ZONE_KEK_PREVIOUS", "AUDIT_HMAC_KEY", "AUDIT_CHAIN_HMAC_KEY",
                    "CARACAL_ADMIN_TOKEN", "CARACAL_INTERNAL_TOKEN"},
    "gateway": {"CARACAL_INTERNAL_TOKEN", "CARACAL_COORDINATOR_TOKEN"},
    "audit": {"ZONE_KEK", "ZONE_KEK_PREVIOUS", "STREAMS_HMAC_KEY", "CARACAL_ADMIN_TOKEN",
              "CARACAL_COORDINATOR_TOKEN"},
    "migrate": set(),
}


def literals_in(dirs):
    out = set()
    for path, text in SOURCES:
        if any(path == d or path.startswith(d + "/") for d in dirs):
            out.update(re.findall(r'"([A-Z][A-Z0-9_]{2,})"', text))
    return out


ROLE_ENV = {role: literals_in(dirs + LIB_DIRS) for role, dirs in ROLE_DIRS.items()}
ALL_ENV = set().union(*ROLE_ENV.values())
# Per-service database settings are composed: CARACAL_<ROLE>_ + a suffix the settings module
# names (DB_POOL_MAX, DB_USER, DATABASE_URL, …), and CARACAL_ + the same suffix.
_settings = "".join(t for p, t in SOURCES if p == "control/store/src/settings.rs")
DB_SUFFIXES = set(re.findall(r'"(DB_[A-Z_]+)"', _settings)) | set(
    re.findall(r'\{\}([A-Z][A-Z0-9_]+)"', _settings))
SECRET_BASE = re.compile(r"(KEY|KEK|PREVIOUS|PASSWORD|TOKEN)$")


def env_known(name, role):
    known = ALL_ENV if role is None else ROLE_ENV[role]
    if name in known or name in EXTERNAL_ENV:
        return True
    roles = ROLES if role in (None, "migrate") else [role]
    for r in roles:
        prefix = f"CARACAL_{r.upper()}_"
        if name.startswith(prefix) and name[len(prefix):] in DB_SUFFIXES:
            return True
    if name.startswith("CARACAL_") and name[len("CARACAL_"):] in DB_SUFFIXES:
        return True
    if name.endswith("_FILE"):
        base = name[:-len("_FILE")]
        return bool(SECRET_BASE.search(base)) and env_known(base, role)
    return False


def check_env(area, names, role):
    for name in sorted(names):
        if not env_known(name, role):
            who = "any role" if role is None else f"the {role} role"
            fail(area, f"{name} is not read by {who} (no such variable in its sources)")
            continue
        if role is None:
            continue
        base = name[:-len("_FILE")] if name.endswith("_FILE") else name
        if base in FORBIDDEN[role]:
            fail(area, f"{name}: the {role} role has no use for this secret")
        # Another role's own database, listener or connection settings (CARACAL_STS_URL and
        # CARACAL_AUDIT_URL are where a role finds another one, and are fine).
        m = re.match(r"CARACAL_(API|STS|GATEWAY|COORDINATOR|AUDIT)_(.*)$", base)
        if m and role != "migrate" and m.group(1).lower() != role \
                and (m.group(2) in DB_SUFFIXES or m.group(2) in ("ADDR", "MAX_CONNECTIONS")):
            fail(area, f"{name}: another role's setting given to {role}")


# --- Files. ------------------------------------------------------------------------------
def files(*patterns):
    out = []
    for dirpath, dirnames, filenames in os.walk(deploy):
        for name in filenames:
            if any(re.fullmatch(p, name) for p in patterns):
                out.append(os.path.join(dirpath, name))
    return sorted(out)


HELM_TEMPLATES = os.sep + os.path.join("helm", "caracal", "templates") + os.sep
parsed = {}
unparsable = set()
for path in files(r".*\.ya?ml"):
    if HELM_TEMPLATES in path:
        continue
    if not yaml_available:
        continue
    try:
        parsed[path] = yaml.safe_load(read(path))
    except yaml.YAMLError as e:
        unparsable.add(path)
        fail("yaml", f"{rel(path)} does not parse: {' '.join(str(e).split())[:160]}")

dashboards = {}
for path in files(r".*\.json"):
    try:
        dashboards[path] = json.loads(read(path))
    except ValueError as e:
        unparsable.add(path)
        fail("json", f"{rel(path)} does not parse: {e}")

# --- Metric names. -----------------------------------------------------------------------
metric_files = files(r".*\.ya?ml") + files(r".*\.json")
metric_files = [p for p in metric_files
                if os.sep + "prometheus" + os.sep in p or os.sep + "grafana" + os.sep in p]
if not metric_files:
    fail("metrics", "no alert rules or dashboard found under prometheus/ and grafana/")
for path in metric_files:
    for name in sorted(set(re.findall(r"\bcaracal_[a-z0-9_]*[a-z0-9]\b", read(path)))):
        if name not in METRICS:
            fail("metrics", f"{rel(path)} uses {name}, which no Rust source exports")

# --- Alert rules. ------------------------------------------------------------------------
RULES = os.path.join(deploy, "prometheus", "caracal-alerts.yaml")
DURATION = re.compile(r"^([0-9]+(ms|s|m|h|d|w|y))+$")
if RULES in parsed:
    doc = parsed[RULES] or {}
    seen = set()
    groups = doc.get("groups") if isinstance(doc, dict) else None
    if not isinstance(groups, list) or not groups:
        fail("rules", "caracal-alerts.yaml has no `groups` list")
        groups = []
    for group in groups:
        for rule in group.get("rules") or []:
            name = rule.get("alert")
            if not name:
                fail("rules", f"group {group.get('name')}: a rule without `alert`")
                continue
            if name in seen:
                fail("rules", f"{name} is defined twice")
            seen.add(name)
            if not str(rule.get("expr", "")).strip():
                fail("rules", f"{name} has no expr")
            if (rule.get("labels") or {}).get("severity") not in ("critical", "warning", "info"):
                fail("rules", f"{name}: labels.severity must be critical, warning or info")
            notes = rule.get("annotations") or {}
            for key in ("summary", "description"):
                if not notes.get(key):
                    fail("rules", f"{name} has no annotations.{key}")
            if "for" in rule and not DURATION.match(str(rule["for"])):
                fail("rules", f"{name}: `for: {rule['for']}` is not a duration")
    for required in ("CaracalSTSAuditReplayBacklogOld", "CaracalGatewayAuditReplayBacklogOld"):
        if required not in seen:
            fail("rules", f"{required} (storage-and-events.md §9.5) is missing")
elif yaml_available and RULES not in unparsable:
    fail("rules", "prometheus/caracal-alerts.yaml is missing")

# --- Dashboard. --------------------------------------------------------------------------
DASHBOARD = os.path.join(deploy, "grafana", "caracal-dashboard.json")
if DASHBOARD in dashboards:
    board = dashboards[DASHBOARD]
    ids = set()
    for panel in board.get("panels", []):
        pid, title = panel.get("id"), panel.get("title")
        if pid in ids:
            fail("dashboard", f"panel id {pid} is used twice")
        ids.add(pid)
        grid = panel.get("gridPos") or {}
        if grid.get("x", 0) + grid.get("w", 0) > 24 or not grid.get("w") or not grid.get("h"):
            fail("dashboard", f"panel {title!r}: gridPos must have w, h and x + w <= 24")
        if panel.get("type") == "row":
            continue
        targets = panel.get("targets") or []
        if not targets or any(not str(t.get("expr", "")).strip() for t in targets):
            fail("dashboard", f"panel {title!r} has a target without a query")
        if (panel.get("datasource") or {}).get("uid") != "${datasource}":
            fail("dashboard", f"panel {title!r} does not use the $datasource variable")
    if not board.get("uid"):
        fail("dashboard", "no uid")
elif DASHBOARD not in unparsable:
    fail("dashboard", "grafana/caracal-dashboard.json is missing")

# --- Compose. ----------------------------------------------------------------------------
COMPOSE = os.path.join(deploy, "compose", "compose.yaml")
ROLE_PORTS = {"api": 3000, "coordinator": 4000, "sts": 8080, "gateway": 8081, "audit": 9090}
if COMPOSE in parsed:
    compose = parsed[COMPOSE] or {}
    services = compose.get("services") or {}
    declared_secrets = set((compose.get("secrets") or {}).keys())
    declared_volumes = set((compose.get("volumes") or {}).keys())
    for name in ["postgres", "redis", "migrate"] + ROLES:
        if name not in services:
            fail("compose", f"no `{name}` service")
    pg = str((services.get("postgres") or {}).get("image", ""))
    if not re.fullmatch(r"postgres:15([.-].*)?", pg):
        fail("compose", f"postgres image is {pg!r}, expected postgres:15")
    redis = services.get("redis") or {}
    if not re.fullmatch(r"redis:7([.-].*)?", str(redis.get("image", ""))):
        fail("compose", f"redis image is {redis.get('image')!r}, expected redis:7")
    flags = " ".join(map(str, redis.get("command") or []))
    for flag in ("--maxmemory-policy noeviction", "--appendonly yes"):
        if flag not in flags:
            fail("compose", f"redis is not started with {flag}")
    instance_ids = {}
    replay_volumes = {}
    used_secrets = set()
    for sname, svc in services.items():
        svc = svc or {}
        env = svc.get("environment") or {}
        if isinstance(env, list):
            env = dict(e.split("=", 1) if "=" in e else (e, "") for e in env)
        mine = set(svc.get("secrets") or [])
        used_secrets |= mine
        for s in mine - declared_secrets:
            fail("compose", f"{sname} uses secret {s}, which is not declared")
        command = svc.get("command") or []
        command = command if isinstance(command, list) else [command]
        is_role = sname in ROLES
        if is_role or sname == "migrate":
            role = sname
            check_env(f"compose {sname}", set(env), role)
            for key, value in env.items():
                if key.endswith("_FILE"):
                    m = re.fullmatch(r"/run/secrets/([A-Za-z0-9_.-]+)", str(value))
                    if not m or m.group(1) not in mine:
                        fail("compose", f"{sname}: {key}={value} is not one of its mounted secrets")
            text = " ".join(map(str, command)) + " " + " ".join(f"{k}={v}" for k, v in env.items())
            for s in mine:
                if f"/run/secrets/{s}" not in text:
                    fail("compose", f"{sname} mounts secret {s} but never reads it")
        if sname == "migrate":
            if "caracal migrate" not in " ".join(map(str, command)) and command[:1] != ["migrate"]:
                fail("compose", "migrate does not run `caracal migrate`")
            if svc.get("ports"):
                fail("compose", "migrate publishes ports")
        if not is_role:
            continue
        if command[:1] != [sname]:
            fail("compose", f"{sname} runs {command!r}, expected [{sname!r}]")
        test = " ".join(map(str, (svc.get("healthcheck") or {}).get("test") or []))
        if f"127.0.0.1:{ROLE_PORTS[sname]}/ready" not in test:
            fail("compose", f"{sname}: healthcheck does not probe /ready on port {ROLE_PORTS[sname]}")
        for port in svc.get("ports") or []:
            if not str(port).endswith(f":{ROLE_PORTS[sname]}"):
                fail("compose", f"{sname} publishes {port}; the role listens on {ROLE_PORTS[sname]}")
        cond = ((svc.get("depends_on") or {}).get("migrate") or {}).get("condition")
        if cond != "service_completed_successfully":
            fail("compose", f"{sname} does not wait for migrate to complete")
        iid = env.get("CARACAL_INSTANCE_ID")
        if iid:
            if iid in instance_ids:
                fail("compose", f"{sname} and {instance_ids[iid]} share CARACAL_INSTANCE_ID {iid}")
            instance_ids[iid] = sname
        if sname in ("sts", "gateway"):
            target = env.get("AUDIT_REPLAY_DIR", "/var/lib/caracal/audit-replay")
            mounts = [str(v) for v in svc.get("volumes") or []]
            hit = [v.split(":")[0] for v in mounts if v.split(":")[1:2] == [target]]
            if not hit or hit[0] not in declared_volumes:
                fail("compose", f"{sname}: no named volume at its AUDIT_REPLAY_DIR {target}")
            elif hit[0] in replay_volumes.values():
                fail("compose", f"{sname} shares its replay volume with another producer")
            else:
                replay_volumes[sname] = hit[0]
    for s in declared_secrets - used_secrets:
        fail("compose", f"secret {s} is declared but no service mounts it")
elif yaml_available and COMPOSE not in unparsable:
    fail("compose", "compose/compose.yaml is missing")

# --- Helm. -------------------------------------------------------------------------------
CHART = os.path.join(deploy, "helm", "caracal")
TEMPLATES = os.path.join(CHART, "templates")
if os.path.isdir(CHART):
    chart = parsed.get(os.path.join(CHART, "Chart.yaml"))
    values = parsed.get(os.path.join(CHART, "values.yaml"))
    if yaml_available:
        if not chart or chart.get("apiVersion") != "v2" or not chart.get("name") \
                or not chart.get("version"):
            fail("helm", "Chart.yaml needs apiVersion v2, name and version")
        if not isinstance(values, dict):
            fail("helm", "values.yaml is missing or not a mapping")
            values = None
    sources = {}
    for name in sorted(os.listdir(TEMPLATES)) if os.path.isdir(TEMPLATES) else []:
        sources[name] = read(os.path.join(TEMPLATES, name))
    defined = set()
    for text in sources.values():
        defined.update(re.findall(r'\{\{-?\s*define\s+"([^"]+)"', text))
    everything = "\n".join(sources.values())
    for name, text in sources.items():
        if text.count("{{") != text.count("}}"):
            fail("helm", f"{name}: unbalanced {{{{ and }}}}")
        actions = re.findall(r"\{\{-?\s*(/\*.*?\*/|[^}]*?)\s*-?\}\}", text, re.S)
        opened = sum(1 for a in actions if re.match(r"(if|range|with|define|block)\b", a))
        closed = sum(1 for a in actions if re.match(r"end\b", a))
        if opened != closed:
            fail("helm", f"{name}: {opened} blocks opened, {closed} ended")
        for used in re.findall(r'\b(?:include|template)\s+"([^"]+)"', text):
            if used not in defined:
                fail("helm", f"{name}: includes {used!r}, which no template defines")
        if values is not None:
            for path in re.findall(r"(?:\$|\.root|\$root)?\.Values((?:\.[A-Za-z_][A-Za-z0-9_]*)+)", text):
                node = values
                for part in path.strip(".").split("."):
                    if not isinstance(node, dict):
                        break
                    if part not in node:
                        fail("helm", f"{name}: .Values{path} does not exist in values.yaml")
                        break
                    node = node[part]
        if re.search(r"^kind:\s*Secret\s*$", text, re.M):
            fail("helm", f"{name} creates a Secret; secrets must come from existing objects")
    # The role table: what each role reads from which Secret.
    table_src = re.search(r'define "caracal.roleTable" -\}\}(.*?)\{\{-? end', everything, re.S)
    if not table_src:
        fail("helm", "_helpers.tpl has no caracal.roleTable")
    elif yaml_available:
        table = yaml.safe_load(table_src.group(1))
        for role in ROLES:
            spec = (table or {}).get(role)
            if not spec:
                fail("helm", f"caracal.roleTable has no row for {role}")
                continue
            names = {spec.get("addrEnv", "")}
            for key in (spec.get("keys") or []) + (spec.get("dbPasswords") or []) + \
                    (spec.get("tokens") or []):
                names.update({key, f"{key}_FILE"})
            check_env(f"helm roleTable {role}", names - {""}, role)
            if spec.get("replay") != (role in ("sts", "gateway")):
                fail("helm", f"caracal.roleTable: replay must be true exactly for sts and gateway")
    for name, text in sources.items():
        role = "migrate" if name.startswith("migrate") else None
        names = set(re.findall(r"-\s+name:\s+([A-Z][A-Z0-9_]+)\s*$", text, re.M))
        if role == "migrate":
            names |= {f"{k}_FILE" for k in re.findall(r'"(CARACAL_[A-Z_]+_PASSWORD)"', text)}
        check_env(f"helm {name}", names, role)
    kinds = "\n".join(sources.values())
    for needle, what in [
        ("kind: HorizontalPodAutoscaler", "a gateway HorizontalPodAutoscaler"),
        ("kind: PodDisruptionBudget", "a gateway PodDisruptionBudget"),
        ('"helm.sh/hook": pre-install,pre-upgrade', "a pre-install/pre-upgrade migrate hook"),
        ("path: /ready", "a readiness probe on /ready"),
        ("path: /health", "a liveness probe on /health"),
        ("kind: ServiceMonitor", "an optional ServiceMonitor"),
    ]:
        if needle not in kinds:
            fail("helm", f"templates lack {what}")
    if values is not None:
        pod = values.get("podSecurityContext") or {}
        box = values.get("securityContext") or {}
        if pod.get("runAsNonRoot") is not True or box.get("readOnlyRootFilesystem") is not True \
                or box.get("allowPrivilegeEscalation") is not False:
            fail("helm", "values: pods must run non-root with a read-only root and no escalation")
        for role in ROLES:
            port = ((values.get("roles") or {}).get(role) or {}).get("port")
            if port != ROLE_PORTS[role]:
                fail("helm", f"values: roles.{role}.port is {port}, the wire port is {ROLE_PORTS[role]}")
    if not os.path.exists(os.path.join(TEMPLATES, "NOTES.txt")):
        fail("helm", "templates/NOTES.txt is missing")
else:
    fail("helm", "helm/caracal/ is missing")

# --- systemd. ----------------------------------------------------------------------------
SYSTEMD = os.path.join(deploy, "systemd")


def unit_lines(path):
    for line in read(path).splitlines():
        line = line.strip()
        if line and not line.startswith(("#", ";", "[")) and "=" in line:
            key, _, value = line.partition("=")
            yield key.strip(), value.strip()


if os.path.isdir(SYSTEMD):
    template = os.path.join(SYSTEMD, "caracal@.service")
    migrate_unit = os.path.join(SYSTEMD, "caracal-migrate.service")
    for path in (template, migrate_unit):
        if not os.path.exists(path):
            fail("systemd", f"{rel(path)} is missing")
            continue
        settings = dict(unit_lines(path))
        for key, want in [("NoNewPrivileges", "yes"), ("ProtectSystem", "strict"),
                          ("ProtectHome", "yes"), ("PrivateTmp", "yes")]:
            if settings.get(key) != want:
                fail("systemd", f"{rel(path)}: {key}={want} is missing")
        if settings.get("User") in (None, "", "root"):
            fail("systemd", f"{rel(path)} must run as an unprivileged User=")
    if os.path.exists(template) and "StateDirectory" not in dict(unit_lines(template)):
        fail("systemd", "caracal@.service has no StateDirectory= (the replay volumes)")
    units = [(template, None), (migrate_unit, "migrate")]
    for role in ROLES:
        dropin = os.path.join(SYSTEMD, f"caracal@{role}.service.d")
        confs = files(r".*\.conf")
        confs = [c for c in confs if os.path.dirname(c) == dropin]
        if not confs:
            fail("systemd", f"no drop-in for caracal@{role} (its credentials)")
        units += [(c, role) for c in confs]
    for path, role in units:
        if not os.path.exists(path):
            continue
        env, creds = set(), set()
        for key, value in unit_lines(path):
            if key == "LoadCredential":
                creds.add(value.split(":", 1)[0])
            if key == "Environment":
                for assignment in value.split():
                    name, _, val = assignment.strip('"').partition("=")
                    env.add(name)
                    m = re.fullmatch(r"/run/credentials/%n/([A-Za-z0-9_.-]+)", val)
                    if name.endswith("_FILE") or name == "PGPASSFILE":
                        if not m or m.group(1) not in creds:
                            fail("systemd", f"{rel(path)}: {name} names no LoadCredential= of this unit")
        check_env(f"systemd {rel(path)}", env, role)
    for path in files(r".*\.env"):
        if os.path.dirname(path) != os.path.join(SYSTEMD, "env"):
            continue
        stem = os.path.basename(path)[:-len(".env")]
        role = stem if stem in ROLE_DIRS else None
        names = {k for k, _ in unit_lines(path)}
        check_env(f"systemd {rel(path)}", names, role)
        for name in names:
            if re.search(r"(PASSWORD|TOKEN|_KEY|KEK)$", name):
                fail("systemd", f"{rel(path)} sets the secret {name}; use a credential")
else:
    fail("systemd", "systemd/ is missing")

# --- The image. --------------------------------------------------------------------------
DOCKERFILE = os.path.join(deploy, "Dockerfile")
if os.path.exists(DOCKERFILE):
    text = read(DOCKERFILE)
    for pattern, what in [
        (r"ARG RUST_IMAGE=rust:1\.95", "a rust:1.95 build image"),
        (r"ARG RUNTIME_IMAGE=debian:bookworm-slim", "a debian:bookworm-slim runtime"),
        (r"cargo build --release --locked --bin caracal", "a locked release build of caracal"),
        (r"postgresql-client", "postgresql-client (backup and restore)"),
        (r"(?m)^USER [1-9][0-9]*(:[0-9]+)?\s*$", "a numeric non-root USER"),
        (r"/var/lib/caracal", "/var/lib/caracal"),
    ]:
        if not re.search(pattern, text):
            fail("image", f"Dockerfile lacks {what}")
else:
    fail("image", "Dockerfile is missing")

for line in failures:
    print(line)
PY
)"
py_status=$?
if [[ -n "$py_out" ]]; then
    while IFS= read -r line; do
        fail "$line"
    done <<<"$py_out"
fi
if [[ $py_status -ne 0 && -z "$py_out" ]]; then
    fail "setup: the file checks stopped with status $py_status"
fi

# --- Shell scripts parse. ----------------------------------------------------------------
while IFS= read -r script; do
    bash -n "$script" 2>/dev/null || fail "shell: ${script#"$deploy"/} does not parse"
done < <(find "$deploy" -name '*.sh' -type f)

# --- promtool: the rules, their unit tests, and every dashboard query. --------------------
# promtool comes from Debian's `prometheus` package. With CHECK_DEPLOY_INSTALL=1 the package
# is downloaded (not installed: installing would start a Prometheus server on port 9090, the
# audit role's port) and promtool alone is unpacked under target/, where later runs find it.
promtool="$(command -v promtool || true)"
cached="$root/target/check-deploy/usr/bin/promtool"
if [[ -z "$promtool" && -x "$cached" ]]; then
    promtool="$cached"
fi
if [[ -z "$promtool" && "${CHECK_DEPLOY_INSTALL:-0}" == 1 ]]; then
    dl="$(mktemp -d)"
    if (cd "$dl" && { apt-get download prometheus >/dev/null 2>&1 \
            || { apt-get update >/dev/null 2>&1 && apt-get download prometheus >/dev/null 2>&1; }; } \
            && mkdir -p "$root/target/check-deploy" \
            && dpkg-deb --fsys-tarfile prometheus_*.deb \
               | tar -x -C "$root/target/check-deploy" ./usr/bin/promtool) && [[ -x "$cached" ]]; then
        promtool="$cached"
    else
        fail "promtool: could not download Debian's prometheus package"
    fi
    rm -rf "$dl"
fi
if [[ -n "$promtool" ]]; then
    rules="$deploy/prometheus/caracal-alerts.yaml"
    tests="$deploy/prometheus/caracal-alerts.test.yaml"
    "$promtool" check rules "$rules" >/dev/null 2>&1 \
        || fail "promtool: check rules rejects prometheus/caracal-alerts.yaml ($("$promtool" check rules "$rules" 2>&1 | grep -m1 -vE '^(Checking|  FAILED:)' | sed "s#$deploy/##" | cut -c1-200))"
    if [[ -f "$tests" ]]; then
        (cd "$(dirname "$tests")" && "$promtool" test rules "$(basename "$tests")" >/dev/null 2>&1) \
            || fail "promtool: the alert unit tests fail (promtool test rules prometheus/caracal-alerts.test.yaml)"
    fi
    # Dashboard queries go through the same parser, as recording rules.
    tmp="$(mktemp -d)"
    "$python" - "$deploy/grafana/caracal-dashboard.json" >"$tmp/dashboard-rules.yaml" 2>/dev/null <<'PY' \
        || fail "promtool: cannot extract the dashboard queries"
import json, sys
board = json.load(open(sys.argv[1], encoding="utf-8"))
print("groups:\n  - name: dashboard\n    rules:")
for panel in board.get("panels", []):
    for target in panel.get("targets", []):
        expr = target["expr"].replace("$__rate_interval", "5m").replace("$__interval", "1m")
        print(f"      - record: dashboard:panel_{panel['id']}:{target['refId']}")
        print(f"        expr: {json.dumps(expr)}")
PY
    "$promtool" check rules "$tmp/dashboard-rules.yaml" >/dev/null 2>&1 \
        || fail "promtool: a dashboard query does not parse ($("$promtool" check rules "$tmp/dashboard-rules.yaml" 2>&1 | grep -m1 -vE '^(Checking|  FAILED:)' | sed "s#$tmp/##" | cut -c1-200))"
    rm -rf "$tmp"
else
    echo "check-deploy: note: promtool is not installed; rule syntax and alert tests skipped (CHECK_DEPLOY_INSTALL=1 fetches it)"
fi

# --- systemd-analyze verify in a scratch root (units, drop-ins, specifiers, directives). ---
if command -v systemd-analyze >/dev/null 2>&1 && [[ -d /usr/lib/systemd/system ]]; then
    scratch="$(mktemp -d)"
    mkdir -p "$scratch/etc/systemd/system" "$scratch/usr/lib/systemd" "$scratch/usr/local/bin" \
             "$scratch/etc/caracal"
    cp -r /usr/lib/systemd/system "$scratch/usr/lib/systemd/"
    cp -r "$deploy"/systemd/caracal* "$scratch/etc/systemd/system/"
    cp "$deploy"/systemd/env/*.env "$scratch/etc/caracal/" 2>/dev/null
    printf '#!/bin/sh\n' >"$scratch/usr/local/bin/caracal"
    chmod +x "$scratch/usr/local/bin/caracal"
    for unit in caracal@sts.service caracal@api.service caracal@coordinator.service \
                caracal@gateway.service caracal@audit.service caracal-migrate.service \
                caracal.target; do
        out="$(systemd-analyze verify --root="$scratch" "$unit" 2>&1)"
        if [[ -n "$out" ]]; then
            fail "systemd: systemd-analyze verify $unit: $(head -n1 <<<"$out" | sed "s#$scratch##g" | cut -c1-160)"
        fi
    done
    rm -rf "$scratch"
else
    echo "check-deploy: note: systemd-analyze is not available; unit verification skipped"
fi

if [[ $failures -gt 0 ]]; then
    echo "check-deploy: $failures failure(s)"
    exit 1
fi
echo "check-deploy: deploy/ is consistent with the code"
