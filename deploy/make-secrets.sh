#!/bin/sh
# Make the secrets of deploy/compose.yaml, once, in deploy/ (mode 0600, never committed):
#   .env            DCSSA_REDIS_PASSWORD (the replicas' Redis password) and REDIS_ADMIN_PASSWORD
#   users.acl       Redis ACL users from redis-users.acl.in, with the SHA-256 of those passwords
#   api-keys.json   an API key for the principal given as $1 (default: web), printed once on stdout
# Usage: sh deploy/make-secrets.sh [PRINCIPAL]      (needs openssl, sha256sum and dcssa-rt)
set -eu
cd "$(dirname "$0")"
umask 077
if [ -e .env ] || [ -e users.acl ]; then
    echo "deploy/.env or deploy/users.acl exists already: remove them to make new secrets" >&2
    exit 1
fi
app=$(openssl rand -hex 32)
admin=$(openssl rand -hex 32)
sha() { printf %s "$1" | sha256sum | cut -d' ' -f1; }
sed -e "s/@DCSSA_SHA256@/$(sha "$app")/" -e "s/@ADMIN_SHA256@/$(sha "$admin")/" redis-users.acl.in > users.acl
chmod 644 users.acl  # read by the redis user in its container; holds only hashes of 256-bit random passwords
printf 'DCSSA_REDIS_PASSWORD=%s\nREDIS_ADMIN_PASSWORD=%s\n' "$app" "$admin" > .env
dcssa-rt api-key add "${1:-web}" --file api-keys.json
echo "wrote deploy/.env, deploy/users.acl and deploy/api-keys.json (keep them out of version control)" >&2
