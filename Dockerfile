# A first image for docker-compose; the hardened multi-stage build comes with the deployment work.
FROM python:3.11-slim
WORKDIR /app
COPY pyproject.toml README.md ./
COPY tagging_worker ./tagging_worker
RUN pip install --no-cache-dir . && useradd --system --uid 10001 tagging
USER tagging
ENTRYPOINT ["tagging-worker"]
CMD ["worker"]
