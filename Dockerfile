# tagging-worker: a slim image with no build tools, running as an unprivileged user.
#   docker build -t tagging-worker .
#   docker run --rm tagging-worker --help
FROM python:3.12-slim AS build
ENV PIP_NO_CACHE_DIR=1 PIP_DISABLE_PIP_VERSION_CHECK=1
WORKDIR /src
COPY pyproject.toml README.md ./
COPY tagging_worker ./tagging_worker
RUN python -m venv /opt/venv && /opt/venv/bin/pip install .

FROM python:3.12-slim
RUN useradd --system --uid 10001 --no-create-home --shell /usr/sbin/nologin tagging
COPY --from=build /opt/venv /opt/venv
ENV PATH=/opt/venv/bin:$PATH \
    PYTHONUNBUFFERED=1 \
    TAGGING_LOG_FORMAT=json \
    PROMETHEUS_MULTIPROC_DIR=/tmp/metrics
USER 10001
WORKDIR /tmp
EXPOSE 9808
# Liveness of the worker's own loops (see README, "Metrics and health").
HEALTHCHECK --interval=30s --timeout=5s --start-period=60s --retries=3 \
  CMD ["python", "-c", "import urllib.request; urllib.request.urlopen('http://127.0.0.1:9808/livez', timeout=4)"]
STOPSIGNAL SIGTERM
ENTRYPOINT ["tagging-worker"]
CMD ["worker"]
