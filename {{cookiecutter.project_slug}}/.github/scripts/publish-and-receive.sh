#!/usr/bin/env bash
# The smoke check of the deployed stack: an event published through the proxy arrives on a stream
# read through the proxy.
#
#   TOKEN=<an API token> bash .github/scripts/publish-and-receive.sh http://127.0.0.1:8080/api/events
set -euo pipefail

api="$1"
stream="$(mktemp)"

publish() {
  curl --silent --show-error --fail-with-body --request POST "$api/" \
    --header "Authorization: Token $TOKEN" --header "Content-Type: application/json" \
    --data "{\"type\": \"message\", \"data\": {\"text\": \"$1\"}}" |
    python3 -c 'import json, sys; print(json.load(sys.stdin)["id"])'
}

# The stream resumes after a first event, so the second one arrives
# whether it is published before or after the stream subscribes.
first=$(publish first)
curl --silent --no-buffer --max-time 30 "$api/stream/" \
  --header "Authorization: Token $TOKEN" --header "Accept: text/event-stream" \
  --header "Last-Event-ID: $first" > "$stream" &
reader=$!
second=$(publish second)
for _ in $(seq 100); do
  grep --quiet "^id: $second" "$stream" && break
  sleep 0.2
done
kill "$reader" 2>/dev/null || true  # unless it already ended
cat "$stream"
grep --quiet "^id: $second" "$stream"
grep --quiet '^data: .*"second"' "$stream"
