#!/usr/bin/env bash
# Creates the virtual environment the tests run their Python helpers with
# (target/test-venv, or $IMGBUILD_TEST_VENV) and installs tests/requirements.txt
# into it. Debian 12 and Ubuntu 24.04 refuse `pip install` into the system
# Python (PEP 668), so test packages never go there. Needs python3-venv.
set -euo pipefail
cd "$(dirname "$0")/.."
venv=${IMGBUILD_TEST_VENV:-target/test-venv}
# The distribution's Python, not whichever one comes first in PATH.
py=/usr/bin/python3
[ -x "$py" ] || py=$(command -v python3)
if [ ! -x "$venv/bin/python3" ]; then
  "$py" -m venv "$venv" || {
    echo "error: cannot create a virtual environment with $py; install python3-venv" >&2
    exit 1
  }
fi
"$venv/bin/python3" -m pip install --quiet --disable-pip-version-check -r tests/requirements.txt
# Fail loudly here rather than in every test that needs it.
"$venv/bin/python3" -c 'import pyfatfs, yaml, jsonschema' || {
  echo "error: pyfatfs, PyYAML or jsonschema did not install into $venv" >&2
  exit 1
}
# kubernetes-validate bundles the API schemas, so it works offline.
"$venv/bin/kubernetes-validate" --version >/dev/null || {
  echo "error: kubernetes-validate did not install into $venv" >&2
  exit 1
}
echo "test Python ready: $venv/bin/python3"
