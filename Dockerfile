# syntax=docker/dockerfile:1
#
# pubnub-presence-server as a container image.
#
#   docker build -t pubnub-presence-server .
#   docker run --rm -p 8090:8090 pubnub-presence-server                       # in-process store (memory://)
#   docker run --rm -p 8090:8090 -e PRESENCE_REDIS_URL=redis://redis-host:6379/0 pubnub-presence-server
#
# Every PRESENCE_* variable of the README works with `-e`; docker-compose.yml runs it next to Redis.
# Two stages on the same pinned base: the first builds wheels (ours and those of its dependencies), the
# second installs them into a virtualenv without pip, build tools or caches, and runs as a non-root user.
# Needs BuildKit (the default builder since Docker 23) for the RUN --mount below.
# .ci/check-container lints this file and repeats its build and health check outside Docker.

FROM python:3.11.14-slim-bookworm AS build

ENV PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1

WORKDIR /src
# Only what the wheel is made of: the package metadata (pyproject.toml names README.md), the package,
# and the lock of the runtime dependencies (requirements/runtime.txt, with hashes).
COPY pyproject.toml README.md ./
COPY requirements/runtime.txt ./requirements/
COPY presence_server ./presence_server
# Our wheel, and a wheel of every locked runtime dependency (no test extras), land in /wheels: the
# image runs exactly the versions CI tested.
RUN pip wheel --no-cache-dir --wheel-dir /wheels --require-hashes -r requirements/runtime.txt \
    && pip wheel --no-cache-dir --wheel-dir /wheels --no-deps .


FROM python:3.11.14-slim-bookworm AS runtime

ENV PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1 \
    PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    PATH=/opt/venv/bin:$PATH \
    PRESENCE_HOST=0.0.0.0 \
    PRESENCE_PORT=8090

# The wheels are bind-mounted from the build stage for this one step, so they never become a layer.
# The venv has no pip of its own: the base image's pip installs into it (--python) from /wheels only.
RUN --mount=type=bind,from=build,source=/wheels,target=/wheels \
    python -m venv --without-pip /opt/venv \
    && python -m pip --python /opt/venv/bin/python install --no-cache-dir --no-index --find-links /wheels \
        pubnub-presence-server \
    && groupadd --system --gid 10001 presence \
    && useradd --system --uid 10001 --gid presence --no-create-home --home-dir /nonexistent \
        --shell /usr/sbin/nologin presence

# Numeric, so that runtimes checking runAsNonRoot can tell without reading /etc/passwd.
USER 10001:10001

EXPOSE 8090

# No curl in a slim image: the standard library asks /health, which answers 200 only while the store
# (Redis) answers; a 503, a refused connection or a timeout raises, and python exits 1 (unhealthy).
# It asks 127.0.0.1 on PRESENCE_PORT, so PRESENCE_HOST must include loopback (0.0.0.0 does).
HEALTHCHECK --interval=15s --timeout=5s --start-period=10s --retries=3 \
    CMD ["python", "-c", "import os, urllib.request; urllib.request.urlopen('http://127.0.0.1:%s/health' % os.environ.get('PRESENCE_PORT', '8090'), timeout=4)"]

ENTRYPOINT ["presence-server"]
