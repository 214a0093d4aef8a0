#!/usr/bin/env bash
# Writes the secrets the Compose stack mounts (./secrets/<name>) and ./.env, once.
#
#   ./init-secrets.sh            # refuses to overwrite an existing ./secrets/
#
# ZONE_KEK, AUDIT_HMAC_KEY and STREAMS_HMAC_KEY come from `caracal keys generate` (the binary on
# PATH, else the image: CARACAL_IMAGE, default caracal:local). Passwords and tokens are 32
# random bytes as hex (64 characters: the tokens must be at least 32 printable characters).
# Nothing secret is printed. Keep a copy of ./secrets/zone_kek somewhere safe: without it the
# sealed signing keys and provider secrets in Postgres cannot be opened, and backups of the
# database are useless.
set -euo pipefail

cd "$(dirname "$0")"
dir=secrets

if [[ -e "$dir" ]]; then
    echo "init-secrets: ./$dir already exists; remove it first to start over (the database" \
         "keeps the old role passwords and KEK canary until its volume is removed too)" >&2
    exit 1
fi

# `caracal keys generate` prints NAME=hex lines.
if command -v caracal >/dev/null 2>&1; then
    keys="$(caracal keys generate)"
else
    keys="$(docker run --rm "${CARACAL_IMAGE:-caracal:local}" keys generate)"
fi

random_hex() {
    od -An -tx1 -N32 /dev/urandom | tr -d ' \n'
}

# Files are 0644 inside a 0700 directory: Compose bind-mounts them with their host mode, the
# containers' unprivileged user must read them, and no other host user can reach them.
umask 022
mkdir -m 0700 "$dir"

write() {
    local name="$1" value="$2"
    if [[ -z "$value" ]]; then
        echo "init-secrets: no value for $name" >&2
        exit 1
    fi
    printf '%s\n' "$value" >"$dir/$name"
    chmod 0644 "$dir/$name"
}

key() {
    # The value of NAME in the `keys generate` output.
    printf '%s\n' "$keys" | sed -n "s/^$1=//p"
}

write zone_kek "$(key ZONE_KEK)"
write audit_hmac_key "$(key AUDIT_HMAC_KEY)"
write streams_hmac_key "$(key STREAMS_HMAC_KEY)"
for name in postgres_password db_password_api db_password_sts db_password_gateway \
            db_password_coordinator db_password_audit db_password_maintenance \
            admin_token internal_token coordinator_token; do
    write "$name" "$(random_hex)"
done

# METRICS_BEARER is read from the environment only, so it travels through Compose's
# interpolation file instead of a secret.
if [[ ! -e .env ]]; then
    (umask 077 && printf 'CARACAL_METRICS_BEARER=%s\n' "$(random_hex)" >.env)
fi

echo "init-secrets: wrote ./$dir/ ($(ls "$dir" | wc -l) files) and ./.env"
echo "init-secrets: the bootstrap admin token is in ./$dir/admin_token"
