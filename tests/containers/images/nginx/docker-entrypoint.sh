#!/bin/sh
# Stand-in for the official nginx image's entrypoint: run the executable
# /docker-entrypoint.d/*.sh in order (a failing one stops the start), render
# every /etc/nginx/templates/*.template into /etc/nginx/conf.d/ with envsubst,
# substituting only the names defined in the environment (optionally only
# those matching NGINX_ENVSUBST_FILTER), then run the command.
set -eu

for script in /docker-entrypoint.d/*.sh; do
    [ -x "$script" ] || continue
    "$script"
done

filter="${NGINX_ENVSUBST_FILTER:-}"
defined_envs=$(printf '${%s} ' $(awk "END { for (name in ENVIRON) { print ( name ~ /${filter}/ ) ? name : \"\" } }" < /dev/null))

for template in /etc/nginx/templates/*.template; do
    [ -f "$template" ] || continue
    output="/etc/nginx/conf.d/$(basename "$template" .template)"
    envsubst "$defined_envs" < "$template" > "$output"
done

exec "$@"
