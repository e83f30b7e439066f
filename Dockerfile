# llm4rerank service image: worker, migrations, audit API and the simulated LLM (see docker-compose.yml).
FROM python:3.11-slim

ENV PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1 \
    LLM4RERANK_PROMPTS_DIR=/app/prompts

WORKDIR /app
# Exact versions from requirements.lock (make lock) first, so a rebuild resolves nothing afresh;
# then the project itself, without re-resolving its dependencies.
COPY requirements.lock /app/requirements.lock
RUN pip install -r /app/requirements.lock
COPY . /app
RUN pip install --no-deps /app \
    && useradd --system --create-home --uid 10001 llm4rerank

USER llm4rerank
EXPOSE 9464 8080 8000
CMD ["llm4rerank", "worker"]
