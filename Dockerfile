FROM python:3.11-slim

ENV PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    PIP_NO_CACHE_DIR=1 \
    VEO_DB_PATH=/data/veo.sqlite3 \
    VEO_WORK_DIR=/data/work

WORKDIR /app
COPY pyproject.toml README.md ./
COPY bot ./bot
COPY cogs ./cogs
RUN pip install . \
    && useradd --create-home --uid 10001 veo \
    && mkdir -p /data \
    && chown veo:veo /data

USER veo
VOLUME ["/data"]
CMD ["python", "-m", "bot"]
