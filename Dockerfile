# llm4rerank service image: worker, migrations, audit API and the simulated LLM (see docker-compose.yml).
FROM python:3.11-slim

ENV PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1 \
    LLM4RERANK_PROMPTS_DIR=/app/prompts

WORKDIR /app
COPY . /app
RUN pip install /app \
    && useradd --system --create-home --uid 10001 llm4rerank

USER llm4rerank
EXPOSE 9464 8080 8000
CMD ["llm4rerank", "worker"]
