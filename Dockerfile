# The bot in a container: `docker build -t questionnaire-bot .` then
# `docker run --env-file .env -v bot-data:/app/data questionnaire-bot`.
FROM python:3.11-slim

ENV PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1

WORKDIR /app
RUN useradd --create-home --uid 10001 bot

# The same install step as `make run`; its layer is cached until requirements.txt changes.
COPY requirements.txt .
RUN pip install -r requirements.txt

COPY . .
RUN mkdir -p /app/data && chown bot:bot /app/data && chmod 700 /app/data
USER 10001

# The default SQLite database (DATABASE_URL=sqlite+aiosqlite:///data/bot.db) lives here.
VOLUME ["/app/data"]

# Webhook mode (WEBHOOK_URL set) listens on WEB_SERVER_PORT; polling needs no port.
EXPOSE 8080

CMD ["python", "main.py"]
