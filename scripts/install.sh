#!/bin/sh
# Create a virtual environment and install palaver into it from a hash-pinned lock file.
# The Makefile (make run, make test) and the Dockerfile both install through this script,
# so CI exercises the image's install steps too.
#
#   scripts/install.sh VENV LOCKFILE [--editable]
set -eu
venv="$1"
lock="$2"
python="${PYTHON:-python3}"
"$python" -m venv "$venv"
"$venv/bin/pip" install --quiet --disable-pip-version-check --no-cache-dir --require-hashes -r "$lock"
if [ "${3:-}" = "--editable" ]; then
  "$venv/bin/pip" install --quiet --disable-pip-version-check --no-deps --no-build-isolation -e .
else
  "$venv/bin/pip" install --quiet --disable-pip-version-check --no-cache-dir --no-deps --no-build-isolation .
fi
