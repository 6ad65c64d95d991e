#!/usr/bin/env bash
# Run the example chat site: migrate, seed the demo users, then start the ASGI server, a
# Celery worker, Flower and (when none answers at REDIS_URL) a redis-server, all under honcho:
# one log stream, and Ctrl-C (or a SIGTERM to its process group) stops every one of them; a
# SIGKILL of the group kills them all too. `make demo` installs, then runs this.
#
# Environment (all optional):
#   PORT         site port (default 8000; a free one if that is busy)
#   FLOWER_PORT  Flower port (default 5555; a free one if that is busy)
#   HOST         address both listen on (default 127.0.0.1)
#   REDIS_URL    Redis to use (default redis://127.0.0.1:6379/0). If nothing answers there,
#                a redis-server is started on its port (or on a free port if something
#                else holds that one) and REDIS_URL is adjusted to match.
#   DATABASE_URL any dj-database-url URL (default: SQLite at example/db.sqlite3)
#   VENV         the virtualenv to run from (default .venv)
set -euo pipefail

cd "$(dirname "${BASH_SOURCE[0]}")/.."
ROOT=$PWD
VENV=${VENV:-.venv}
[[ $VENV == /* ]] || VENV="$ROOT/$VENV"
PY="$VENV/bin/python"
if [[ ! -x $PY ]]; then
    echo "demo: no virtualenv at $VENV; run 'make demo' (it installs everything first)." >&2
    exit 1
fi
if [[ ! -f example/node_modules/@hotwired/turbo/dist/turbo.es2017-esm.js ]]; then
    echo "demo: Turbo is not installed; run 'make install' (or: cd example && npm install)." >&2
    exit 1
fi

export PATH="$VENV/bin:$PATH"
export PYTHONPATH="$ROOT${PYTHONPATH:+:$PYTHONPATH}"
export PYTHONUNBUFFERED=1 # log lines reach honcho as they are written
export DJANGO_SETTINGS_MODULE=example.settings
export HOST=${HOST:-127.0.0.1}
export PORT=${PORT:-8000}
export FLOWER_PORT=${FLOWER_PORT:-5555}
export REDIS_URL=${REDIS_URL:-redis://127.0.0.1:6379/0}

# Pick the ports and decide about Redis. Prints shell assignments; notes go to stderr.
assignments=$(
    "$PY" - <<'EOF'
import os
import shlex
import socket
import sys
from urllib.parse import urlsplit, urlunsplit

import redis

host = os.environ["HOST"]
taken = set()


def is_free(port, address):
    with socket.socket() as s:
        s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            s.bind((address, port))
        except OSError:
            return False
        return port not in taken


def free_port(address):
    while True:
        with socket.socket() as s:
            s.bind((address, 0))
            port = s.getsockname()[1]
        if port not in taken:
            return port


def pick(name, address):
    wanted = int(os.environ[name])
    port = wanted if is_free(wanted, address) else free_port(address)
    if port != wanted:
        print(f"demo: port {wanted} is busy, using {name}={port}", file=sys.stderr)
    taken.add(port)
    print(f"export {name}={port}")


pick("PORT", host)
pick("FLOWER_PORT", host)

url = os.environ["REDIS_URL"]
try:
    redis.Redis.from_url(url, socket_connect_timeout=1, socket_timeout=1).ping()
    answers = True
except Exception:  # refused, timed out, not Redis at all: start our own
    answers = False
if answers:
    print(f"demo: using the Redis at {url}", file=sys.stderr)
    print("START_REDIS=0")
    sys.exit()
parts = urlsplit(url)
if parts.hostname not in ("127.0.0.1", "localhost", "::1"):
    print(f"demo: nothing answers at REDIS_URL={url}; start that Redis first.", file=sys.stderr)
    sys.exit(1)
port = parts.port or 6379
if not is_free(port, "127.0.0.1"):
    wanted, port = port, free_port("127.0.0.1")
    print(f"demo: port {wanted} is taken by something that is not Redis, "
          f"starting Redis on {port}", file=sys.stderr)
    netloc = parts.netloc.rsplit("@", 1)
    netloc[-1] = f"127.0.0.1:{port}"
    url = urlunsplit(parts._replace(netloc="@".join(netloc)))
else:
    print(f"demo: nothing answers at {url}, starting redis-server on port {port}", file=sys.stderr)
print("START_REDIS=1")
print(f"export REDIS_PORT={port}")
print(f"export REDIS_URL={shlex.quote(url)}")
EOF
)
eval "$assignments"

# The Procfile starts every process with `setpriv --pdeathsig KILL`, so that none outlives
# honcho (a supervisor that SIGKILLs our process group kills honcho only).
command -v setpriv >/dev/null || {
    echo "demo: setpriv is not installed (Debian/Ubuntu: apt-get install util-linux)." >&2
    exit 1
}
processes=(web worker flower)
if [[ $START_REDIS == 1 ]]; then
    command -v redis-server >/dev/null || {
        echo "demo: redis-server is not installed (make install does it)." >&2
        exit 1
    }
    processes+=(redis)
fi

"$PY" example/manage.py migrate --noinput -v 0
"$PY" example/manage.py seed_demo

cat <<EOF

  turbo_tasks example chat
  ------------------------
  Site:    http://$HOST:$PORT/   (log in as two users in two browsers)
  Flower:  http://$HOST:$FLOWER_PORT/   (no login: a local demo; do not expose it)
  Redis:   $REDIS_URL
  Stop everything with Ctrl-C.

EOF

# honcho gives web the base port (it must come first), prefixes every line with its process
# and stops them all when one exits, on Ctrl-C or on SIGTERM (SIGKILLing what is left after
# 5 s). exec: no shell stays between the caller and honcho, and the Procfile's setpriv makes
# honcho's children die with honcho.
# No .env file: the demo takes its settings from the environment only.
exec "$VENV/bin/honcho" start --procfile Procfile --env /dev/null --port "$PORT" "${processes[@]}"
