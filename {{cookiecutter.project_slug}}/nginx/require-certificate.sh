#!/bin/sh
# Run by the nginx image before nginx starts (compose mounts it into
# /docker-entrypoint.d/). Without a certificate nginx would stop with an
# OpenSSL error about a file it cannot open; this says what to do instead.
set -eu
for file in "$NGINX_TLS_CERTIFICATE" "$NGINX_TLS_CERTIFICATE_KEY"; do
    if [ ! -r "$file" ]; then
        echo "$0: $file is missing: nginx needs a TLS certificate and its key in nginx/certs/" \
            "(fullchain.pem, privkey.pem). For local use, 'make cert' writes a self-signed one;" \
            "in production, put yours there. See docs/deployment.md, \"TLS\"." >&2
        exit 1
    fi
done
