FROM python:3.11-slim

# The health check below asks the ops server, so the image turns it on (loopback only;
# set VEO_HTTP_HOST=0.0.0.0 to let a Prometheus on the container network scrape /metrics).
ENV PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    PIP_NO_CACHE_DIR=1 \
    VEO_DB_PATH=/data/veo.sqlite3 \
    VEO_WORK_DIR=/data/work \
    VEO_HTTP_PORT=8080

WORKDIR /app
COPY pyproject.toml README.md ./
COPY bot ./bot
COPY cogs ./cogs
# A numeric uid (not just a name) so that the runtime and the host agree on who owns /data.
RUN pip install --no-cache-dir . \
    && groupadd --gid 10001 veo \
    && useradd --create-home --uid 10001 --gid 10001 veo \
    && mkdir -p /data/work \
    && chown -R 10001:10001 /data

USER 10001:10001
VOLUME ["/data"]
EXPOSE 8080
# /healthz answers while the bot's event loop does; the probe exits 1 with the reason.
HEALTHCHECK --interval=30s --timeout=5s --start-period=60s --retries=3 \
    CMD ["python", "-m", "bot.ops.probe"]
CMD ["python", "-m", "bot"]
