#!/usr/bin/env bash
# The system packages `make test` needs beyond python3: redis-server (the integration tests start
# their own), Chromium at /usr/bin/chromium (the browser tests) and python3-venv (Debian's python3
# ships without it). One step shared by `make test` (`make system-deps`) and .ci/run.
# It installs them with apt-get when it can (as root, or with password-less sudo); when it can't,
# it stops at once with the exact command to run, rather than minutes later in the tests.
set -euo pipefail

missing=()
command -v redis-server >/dev/null 2>&1 || missing+=(redis-server)
[ -x "${CHROMIUM:-/usr/bin/chromium}" ] || missing+=(chromium)
python3 -c 'import ensurepip, venv' >/dev/null 2>&1 || missing+=(python3-venv)
if [ ${#missing[@]} -eq 0 ]; then
  exit 0
fi

if ! command -v apt-get >/dev/null 2>&1; then
  echo "setup: missing ${missing[*]}, and this is not a Debian/Ubuntu machine (no apt-get)." >&2
  echo "setup: install them with your package manager (Chromium must be at /usr/bin/chromium), then rerun." >&2
  exit 1
fi

if [ "$(id -u)" -eq 0 ]; then
  as_root=()
elif command -v sudo >/dev/null 2>&1 && sudo -n true 2>/dev/null; then
  as_root=(sudo -n)
else
  echo "setup: missing ${missing[*]}. Install them with:" >&2
  echo "  sudo apt-get update && sudo apt-get install -y ${missing[*]}" >&2
  exit 1
fi

echo "setup: installing ${missing[*]} with apt-get"
"${as_root[@]}" apt-get update -qq
"${as_root[@]}" env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
