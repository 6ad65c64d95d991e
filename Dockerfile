# The example site and its worker in one image: docker compose up (see docker-compose.yml).
FROM python:3.11-slim

ENV PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1

# Node is only needed to install Turbo (@hotwired/turbo) from npm; the app serves it.
RUN apt-get update \
    && apt-get install -y --no-install-recommends nodejs npm \
    && rm -rf /var/lib/apt/lists/*

WORKDIR /app

# Dependencies first, so editing the code does not reinstall them.
COPY pyproject.toml README.md ./
COPY turbo_tasks ./turbo_tasks
RUN pip install -e ".[example]"
COPY example/package.json example/.npmrc ./example/
RUN cd example && npm install --no-audit --no-fund --loglevel=error

COPY . .

RUN useradd --create-home --uid 1000 app && mkdir -p /data && chown app /data
USER app

# worker/ and example/ run from the repository root, as in the Procfile.
ENV PYTHONPATH=/app \
    DJANGO_SETTINGS_MODULE=example.settings \
    HOST=0.0.0.0 \
    PORT=8000 \
    FLOWER_PORT=5555
EXPOSE 8000 5555
CMD ["sh", "-c", "exec uvicorn example.asgi:application --host $HOST --port $PORT --timeout-graceful-shutdown 5"]
