#!/bin/sh
# What the Docker image does, done here (no Docker engine is needed): install from the runtime
# lock with scripts/install.sh, start `palaver serve` as the image's CMD does, wait for
# `palaver healthcheck` (the image's HEALTHCHECK), answer one chat request, stop.
set -eu
work="$(mktemp -d)"
trap 'kill "$pid" 2>/dev/null || true; rm -rf "$work"' EXIT
scripts/install.sh "$work/venv" requirements.lock
port="$("$work/venv/bin/python" -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])')"
export HOST=127.0.0.1 PORT="$port"
(cd "$work" && exec "$work/venv/bin/palaver" serve --log-level warning) &
pid=$!
for _ in $(seq 100); do
  "$work/venv/bin/palaver" healthcheck 2>/dev/null && break
  sleep 0.1
done
"$work/venv/bin/palaver" healthcheck
answer="$(curl -sf "http://127.0.0.1:$port/v1/chat/completions" -H 'Content-Type: application/json' \
  -d '{"model": "gpt-3.5-turbo", "messages": [{"role": "user", "content": "image check"}]}')"
echo "$answer" | grep -q '"content":"image check"'
# the playground's files are in the installed package (package data, not the source tree)
curl -sf "http://127.0.0.1:$port/" | grep -q '<title>palaver playground</title>'
curl -sf "http://127.0.0.1:$port/playground/vendor/purify.es.mjs" | grep -q 'DOMPurify'
echo "image-check: installed from requirements.lock, served, healthy, answered, page served"
