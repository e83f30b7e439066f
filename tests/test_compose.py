"""Static checks of docker-compose.yml (Docker itself is not available to the tests)."""

from __future__ import annotations

import shlex
from urllib.parse import urlsplit

import yaml
from service_kit import REPO

COMPOSE = yaml.safe_load((REPO / "docker-compose.yml").read_text())
SERVICES = COMPOSE["services"]

WORKER_ENV_KEYS = {
    "LLM4RERANK_KAFKA_BOOTSTRAP",
    "LLM4RERANK_DATABASE_URL",
    "LLM4RERANK_LLM_BASE_URL",
    "LLM4RERANK_LLM_MODEL",
    "LLM4RERANK_LLM_API_KEY",
    "LLM4RERANK_REQUEST_TOPIC",
    "LLM4RERANK_RESULT_TOPIC",
    "LLM4RERANK_DLQ_TOPIC",
    "LLM4RERANK_MAX_STEPS",
    "LLM4RERANK_CONCURRENCY",
    "LLM4RERANK_LLM_STRUCTURED",
    "LLM4RERANK_PROMPTS",
    "LLM4RERANK_AUDIT_TOKENS",
    "LLM4RERANK_METRICS_PORT",
}
WORKERS = ("worker", "worker-dev")


def env(name: str) -> dict[str, str]:
    raw = SERVICES[name].get("environment") or {}
    if isinstance(raw, list):
        raw = dict(item.split("=", 1) for item in raw)
    return {k: str(v) for k, v in raw.items()}


def command(name: str) -> list[str]:
    cmd = SERVICES[name].get("command") or []
    return shlex.split(cmd) if isinstance(cmd, str) else [str(c) for c in cmd]


def profiles(name: str) -> list[str]:
    return list(SERVICES[name].get("profiles") or [])


def container_ports(name: str) -> dict[int, int]:
    """host port -> container port, from short-syntax `ports` entries."""
    out = {}
    for spec in SERVICES[name].get("ports") or []:
        parts = str(spec).split(":")
        out[int(parts[-2])] = int(parts[-1])
    return out


def listeners(value: str) -> dict[str, tuple[str, int]]:
    """'NAME://host:port,...' -> {NAME: (host, port)}"""
    out = {}
    for item in value.split(","):
        name, addr = item.strip().split("://")
        host, port = addr.rsplit(":", 1)
        out[name] = (host, int(port))
    return out


def test_services_present():
    expected = {"kafka", "postgres", "vllm", "worker", "migrate", "audit-api", "sim-llm"}
    expected |= {"worker-dev"}
    assert expected <= set(SERVICES), expected - set(SERVICES)


def test_kafka_is_single_node_kraft_on_9092():
    kafka = SERVICES["kafka"]
    assert kafka["image"].startswith("apache/kafka:")
    assert 9092 in container_ports("kafka")
    e = env("kafka")
    assert set(e["KAFKA_PROCESS_ROLES"].split(",")) == {"broker", "controller"}
    assert "KAFKA_ZOOKEEPER_CONNECT" not in e
    node_id = e["KAFKA_NODE_ID"]
    assert e["KAFKA_CONTROLLER_QUORUM_VOTERS"].startswith(f"{node_id}@")
    bound = listeners(e["KAFKA_LISTENERS"])
    assert e["KAFKA_CONTROLLER_LISTENER_NAMES"] in bound
    assert e["KAFKA_OFFSETS_TOPIC_REPLICATION_FACTOR"] == "1"
    assert e["KAFKA_TRANSACTION_STATE_LOG_REPLICATION_FACTOR"] == "1"
    # The host port 9092 must land on a listener that advertises itself as reachable from the host.
    host_listener = [n for n, (_, p) in bound.items() if p == container_ports("kafka")[9092]]
    assert host_listener, "host port 9092 maps to no Kafka listener"
    advertised = listeners(e["KAFKA_ADVERTISED_LISTENERS"])
    assert advertised[host_listener[0]][1] == 9092


def test_worker_env_keys_are_known():
    for name in WORKERS:
        unknown = set(env(name)) - WORKER_ENV_KEYS
        assert not unknown, f"{name}: unknown env keys {unknown}"


def test_worker_bootstrap_points_at_kafka_service():
    advertised = listeners(env("kafka")["KAFKA_ADVERTISED_LISTENERS"])
    bound = listeners(env("kafka")["KAFKA_LISTENERS"])
    for name in WORKERS:
        host, port = env(name)["LLM4RERANK_KAFKA_BOOTSTRAP"].rsplit(":", 1)
        assert host == "kafka", name
        # A listener the broker binds on that port, advertised under the service name.
        matching = [n for n, (h, p) in advertised.items() if (h, p) == (host, int(port))]
        assert matching, f"{name}: kafka does not advertise {host}:{port}"
        assert bound[matching[0]][1] == int(port)
        assert "kafka" in SERVICES[name]["depends_on"]


def test_worker_database_url_points_at_postgres_service():
    pg_env = env("postgres")
    assert SERVICES["postgres"]["image"].startswith("postgres:16")
    for name in (*WORKERS, "migrate"):
        url = urlsplit(env(name)["LLM4RERANK_DATABASE_URL"])
        assert url.scheme == "postgresql+asyncpg", name
        assert (url.hostname, url.port) == ("postgres", 5432), name
        assert url.path.lstrip("/") == pg_env["POSTGRES_DB"] == "llm4rerank"
        assert url.username == pg_env["POSTGRES_USER"]
        assert url.password == pg_env["POSTGRES_PASSWORD"]


def test_audit_api_reads_with_the_reader_role():
    url = urlsplit(env("audit-api")["LLM4RERANK_READER_DATABASE_URL"])
    assert (url.hostname, url.port, url.username) == ("postgres", 5432, "llm4rerank_reader")
    init_sql = [str(v).split(":")[0] for v in SERVICES["postgres"]["volumes"] if "initdb" in str(v)]
    assert init_sql and "llm4rerank_reader" in (REPO / init_sql[0]).read_text()


def test_worker_llm_endpoints():
    model = "meta-llama/Llama-2-13b-chat-hf"
    assert env("worker")["LLM4RERANK_LLM_BASE_URL"] == "http://vllm:8000/v1"
    assert env("worker-dev")["LLM4RERANK_LLM_BASE_URL"] == "http://sim-llm:8000/v1"
    for name in WORKERS:
        assert env(name)["LLM4RERANK_LLM_MODEL"] == model
    assert env("worker")["LLM4RERANK_METRICS_PORT"] == "9464"
    assert 9464 in container_ports("worker")


def test_vllm_serves_llama2_with_shipped_chat_template():
    vllm = SERVICES["vllm"]
    assert vllm["image"].startswith("vllm/vllm-openai:")
    cmd = command("vllm")
    assert cmd[cmd.index("--model") + 1] == "meta-llama/Llama-2-13b-chat-hf"
    assert "--enable-prefix-caching" in cmd
    assert cmd[cmd.index("--port") + 1] == "8000"
    template_in_container = cmd[cmd.index("--chat-template") + 1]
    mounts = {}
    for vol in vllm.get("volumes") or []:
        src, dst = str(vol).split(":")[:2]
        mounts[dst] = src
    assert template_in_container in mounts, "chat template is not mounted into the container"
    template = REPO / mounts[template_in_container]
    assert template.is_file(), template
    text = template.read_text()
    assert "[INST]" in text and "<<SYS>>" in text
    assert "HUGGING_FACE_HUB_TOKEN" in env("vllm")
    devices = vllm["deploy"]["resources"]["reservations"]["devices"]
    assert any("gpu" in d.get("capabilities", []) for d in devices)


def test_sim_llm_only_in_dev_profile():
    assert profiles("sim-llm") == ["dev"]
    assert profiles("worker-dev") == ["dev"]
    for name, svc in SERVICES.items():
        if "dev" in profiles(name):
            continue
        deps = svc.get("depends_on") or []
        assert "sim-llm" not in deps, name
        assert not any("sim-llm" in v for v in env(name).values()), name


def test_commands_use_llm4rerank_verbs():
    assert command("worker") == ["llm4rerank", "worker"]
    assert command("worker-dev") == ["llm4rerank", "worker"]
    assert command("migrate") == ["llm4rerank", "db", "upgrade"]
    assert command("audit-api")[:2] == ["llm4rerank", "audit-api"]
    sim = command("sim-llm")
    assert sim[:2] == ["llm4rerank", "sim-llm"]
    assert sim[sim.index("--host") + 1] == "0.0.0.0"
    assert sim[sim.index("--port") + 1] == "8000"
    assert 8080 in container_ports("audit-api")


def test_app_services_build_from_repo_dockerfile():
    dockerfile = (REPO / "Dockerfile").read_text()
    assert "FROM python:3.11-slim" in dockerfile
    users = [line.split()[1] for line in dockerfile.splitlines() if line.startswith("USER ")]
    assert users and users[-1] not in ("root", "0"), "image must run as a non-root user"
    for name in ("worker", "worker-dev", "migrate", "audit-api", "sim-llm"):
        build = SERVICES[name].get("build")
        context = build if isinstance(build, str) else (build or {}).get("context")
        assert context == ".", name
