# The bot in a container: `docker build -t questionnaire-bot .` then
# `docker run --env-file .env -v bot-data:/app/data questionnaire-bot` (docs/deploy.md).
# Every stage starts from `base`, so `podman build --from IMAGE` swaps the one base image.
FROM python:3.11-slim AS base

ENV PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1

# The dependencies, as wheels only (no compiler needed or shipped), in a virtual environment
# without pip or C sources; its layer is cached until requirements.txt changes.
FROM base AS dependencies
COPY requirements.txt /tmp/requirements.txt
RUN python -m venv --without-pip /opt/venv \
    && python -m pip --python /opt/venv/bin/python install --only-binary=:all: -r /tmp/requirements.txt \
    && find /opt/venv \( -name '*.c' -o -name '*.pyx' -o -name '*.pxd' \) -delete

FROM base
ENV PATH=/opt/venv/bin:$PATH
WORKDIR /app
RUN useradd --create-home --uid 10001 --user-group bot \
    && mkdir -p /app/data && chown bot:bot /app/data && chmod 700 /app/data
COPY --from=dependencies /opt/venv /opt/venv
COPY . .
USER 10001

# The default SQLite database (DATABASE_URL=sqlite+aiosqlite:///data/bot.db) lives here.
VOLUME ["/app/data"]

# Webhook mode (WEBHOOK_URL set) listens on WEB_SERVER_PORT; polling needs no port
# (METRICS_PORT, when set, serves /metrics in polling mode).
EXPOSE 8080

CMD ["python", "main.py"]
