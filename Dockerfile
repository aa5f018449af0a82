# One image for every tokenrelay role: run it as `tokenrelay gateway|streamer|runner ...` (see compose.yaml).
FROM python:3.11-slim

ENV PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1

WORKDIR /src
# The repository's sources only (not a local .venv or caches): the project metadata, the license files the wheel
# carries, and the one package.
COPY pyproject.toml README.md LICENSE NOTICE ./
COPY tokenrelay ./tokenrelay
RUN pip install --no-cache-dir . \
    && useradd --create-home --uid 10001 --shell /usr/sbin/nologin tokenrelay

USER tokenrelay
WORKDIR /home/tokenrelay
# gateway, streamer, runner (ops endpoints)
EXPOSE 8080 8081 8090
CMD ["tokenrelay", "--help"]
