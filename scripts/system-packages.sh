#!/usr/bin/env bash
# Install the Debian packages the tests and the demo need, when they are missing.
# Usage: scripts/system-packages.sh [browser] [postgres] [rabbitmq]
set -euo pipefail

need=()
command -v redis-server >/dev/null || need+=(redis-server)
command -v setpriv >/dev/null || need+=(util-linux) # the demo's Procfile
command -v node >/dev/null || need+=(nodejs npm)
for extra in "$@"; do
    case $extra in
    browser) command -v chromium >/dev/null || need+=(chromium) ;;
    # The suite runs its own cluster with Debian's server binaries (tests/postgres.py).
    postgres) compgen -G "/usr/lib/postgresql/*/bin/initdb" >/dev/null || need+=(postgresql) ;;
    # The suite runs its own node with Debian's server binaries (tests/rabbitmq.py).
    rabbitmq) [[ -x /usr/lib/rabbitmq/bin/rabbitmq-server ]] || need+=(rabbitmq-server) ;;
    *) echo "system-packages.sh: unknown extra $extra (browser, postgres, rabbitmq)" >&2 && exit 2 ;;
    esac
done
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
