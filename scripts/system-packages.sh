#!/usr/bin/env bash
# Install the Debian packages the tests and the demo need, when they are missing.
# Usage: scripts/system-packages.sh [browser]
set -euo pipefail

need=()
command -v redis-server >/dev/null || need+=(redis-server)
command -v node >/dev/null || need+=(nodejs npm)
if [[ "${1:-}" == "browser" ]]; then
    command -v chromium >/dev/null || need+=(chromium)
fi
((${#need[@]})) || exit 0

if [[ $(id -u) -eq 0 ]]; then
    sudo=()
elif command -v sudo >/dev/null; then
    sudo=(sudo)
else
    echo "Missing: ${need[*]}. Install them (Debian/Ubuntu: apt-get install ${need[*]})." >&2
    exit 1
fi
echo "Installing ${need[*]} with apt-get" >&2
export DEBIAN_FRONTEND=noninteractive
"${sudo[@]}" apt-get update -qq
"${sudo[@]}" apt-get install -y -qq --no-install-recommends "${need[@]}" >/dev/null
