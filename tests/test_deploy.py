"""The deployment recipes in deploy/: what can be checked without Docker or Kubernetes.

Every YAML parses; every `motionserve ...` command line parses with the real CLI; every
`MOTIONSERVE_*` variable is a real setting with a valid value; the KEDA query runs on the real
schema; the manifests agree with each other (names, secret keys, grace period vs drain timeout).
"""

from __future__ import annotations

import re
import shlex
import shutil
import subprocess
import time
import tomllib
from pathlib import Path
from typing import Any, Iterator

import pytest
import yaml
from sqlalchemy import create_engine, insert, text

from motionserve.cli import build_parser
from motionserve.config import Settings
from motionserve.database import jobs, metadata
from motionserve.metrics import FleetCollector

ROOT = Path(__file__).resolve().parents[1]
DEPLOY = ROOT / "deploy"
K8S = DEPLOY / "kubernetes"
ENV_PREFIX = "MOTIONSERVE_"


def load_all(path: Path) -> list[dict[str, Any]]:
    return [doc for doc in yaml.safe_load_all(path.read_text()) if doc is not None]


def compose() -> dict[str, Any]:
    return yaml.safe_load((DEPLOY / "compose.yaml").read_text())


def k8s_docs() -> list[dict[str, Any]]:
    return [doc for path in sorted(K8S.glob("*.yaml")) if path.name != "kustomization.yaml" for doc in load_all(path)]


def k8s_objects(kind: str) -> list[dict[str, Any]]:
    return [doc for doc in k8s_docs() if doc["kind"] == kind]


def pod_containers(deployment: dict[str, Any]) -> list[dict[str, Any]]:
    spec = deployment["spec"]["template"]["spec"]
    return spec.get("initContainers", []) + spec["containers"]


def deployment_running(subcommand: str) -> dict[str, Any]:
    (found,) = [d for d in k8s_objects("Deployment")
                if any(c.get("command", [])[:2] == ["motionserve", subcommand] for c in d["spec"]["template"]["spec"]["containers"])]
    return found


_REFERENCE = re.compile(r"\$\{(\w+)(?:(:?[-?])([^}]*))?\}")


def interpolate(value: str) -> str:
    """Compose's `${VAR}` / `${VAR:-default}` / `${VAR:?error}` with an empty environment: the
    default where there is one, a placeholder for a required variable (the operator's secret)."""
    value = value.replace("$$", "\0")
    value = _REFERENCE.sub(lambda m: m.group(3) if m.group(2) in (":-", "-") else "placeholder", value)
    return value.replace("\0", "$")


def compose_env(service: dict[str, Any]) -> dict[str, str]:
    env = service.get("environment", {})
    if isinstance(env, list):
        env = dict(item.split("=", 1) for item in env)
    return {k: str(v) for k, v in env.items()}


def command_lines() -> Iterator[tuple[str, list[str]]]:
    """Every command line that starts motionserve: compose services, k8s containers, the Dockerfile."""
    for name, service in compose()["services"].items():
        command = service.get("command")
        if isinstance(command, list) and command[:1] == ["motionserve"]:
            yield f"compose:{name}", command
    for deployment in k8s_objects("Deployment"):
        for container in pod_containers(deployment):
            command = container.get("command", []) + container.get("args", [])
            if command[:1] == ["motionserve"]:
                yield f"{deployment['metadata']['name']}:{container['name']}", command
    cmd = re.search(r"^CMD (\[.*\])$", (DEPLOY / "Dockerfile").read_text(), re.M)
    assert cmd, "the Dockerfile has an exec-form CMD"
    yield "Dockerfile", yaml.safe_load(cmd.group(1))


def motionserve_env() -> Iterator[tuple[str, str, str | None]]:
    """(where, variable, value or None for a secret reference) of every MOTIONSERVE_* variable set."""
    for name, service in compose()["services"].items():
        for var, value in compose_env(service).items():
            if var.startswith(ENV_PREFIX):
                yield f"compose:{name}", var, interpolate(value)
    for deployment in k8s_objects("Deployment"):
        for container in pod_containers(deployment):
            for item in container.get("env", []):
                if item["name"].startswith(ENV_PREFIX):
                    yield f"{deployment['metadata']['name']}:{container['name']}", item["name"], item.get("value")
    for var, value in re.findall(r"\b(MOTIONSERVE_\w+)=(\S+)", (DEPLOY / "Dockerfile").read_text()):
        yield "Dockerfile", var, value


def seconds(duration: str | int) -> float:
    """A compose duration (`660s`, `11m`, `1m30s`) in seconds."""
    if isinstance(duration, int):
        return duration
    parts = re.findall(r"(\d+(?:\.\d+)?)(h|m|s|ms|us)", duration)
    assert parts and "".join(n + u for n, u in parts) == duration, duration
    scale = {"h": 3600, "m": 60, "s": 1, "ms": 1e-3, "us": 1e-6}
    return sum(float(n) * scale[u] for n, u in parts)


# -- files parse ----------------------------------------------------------------------------------


@pytest.mark.parametrize("path", sorted(DEPLOY.rglob("*.yaml")), ids=lambda p: str(p.relative_to(DEPLOY)))
def test_every_yaml_file_parses(path: Path) -> None:
    docs = load_all(path)
    assert docs and all(isinstance(d, dict) for d in docs)


def test_kustomization_lists_existing_files() -> None:
    (kustomization,) = load_all(K8S / "kustomization.yaml")
    for resource in kustomization["resources"]:
        assert (K8S / resource).is_file(), resource


@pytest.mark.skipif(shutil.which("kubectl") is None, reason="kubectl is not installed")
def test_kustomize_renders_the_manifests() -> None:
    out = subprocess.run(["kubectl", "kustomize", str(K8S)], capture_output=True, text=True, timeout=60)
    assert out.returncode == 0, out.stderr
    kinds = sorted(doc["kind"] for doc in yaml.safe_load_all(out.stdout))
    assert kinds == sorted(["Secret", "PersistentVolumeClaim", "Deployment", "Deployment", "Service",
                            "TriggerAuthentication", "ScaledObject"])


# -- commands and settings are real ---------------------------------------------------------------


def test_every_motionserve_command_line_parses() -> None:
    lines = list(command_lines())
    subcommands = {argv[1] for _, argv in lines}
    assert {"serve", "worker"} <= subcommands
    parser = build_parser()
    for where, argv in lines:
        try:
            args = parser.parse_args(argv[1:])
        except SystemExit:
            pytest.fail(f"{where}: {' '.join(argv)} is not a valid motionserve command line")
        if args.command == "serve":
            assert args.no_workers, f"{where}: API nodes run without in-process workers"


def test_every_command_the_readme_shows_parses() -> None:
    readme = (DEPLOY / "README.md").read_text()
    shown = re.findall(r"\bmotionserve\s+((?:serve|worker|keys|models|db)\b[^`\n#|(]*)", readme)
    assert len(shown) >= 5
    parser = build_parser()
    for line in shown:
        try:
            parser.parse_args(shlex.split(line))
        except SystemExit:
            pytest.fail(f"deploy/README.md shows `motionserve {line.strip()}`, which the CLI refuses")


def test_every_motionserve_variable_is_a_setting_with_a_valid_value() -> None:
    found = list(motionserve_env())
    assert len({var for _, var, _ in found}) >= 8
    for where, var, value in found:
        field = var[len(ENV_PREFIX):].lower()
        assert field in Settings.model_fields, f"{where}: {var} is not a motionserve setting"
        if value is not None:  # None: from a Secret
            Settings(**{field: value})  # raises ValidationError on a bad value


def test_compose_api_nodes_sit_behind_the_proxy_and_deliver_files_themselves() -> None:
    services = compose()["services"]
    api_nodes = sorted(name for name, s in services.items() if s.get("command", [])[:2] == ["motionserve", "serve"])
    assert len(api_nodes) == 2
    caddyfile = (DEPLOY / "Caddyfile").read_text()
    upstreams = re.search(r"reverse_proxy ([^{]+)\{", caddyfile).group(1).split()
    assert sorted(upstreams) == [f"{name}:8000" for name in api_nodes]
    assert re.search(r"^\s*flush_interval -1$", caddyfile, re.M), "SSE must not be buffered"
    for name in api_nodes:
        env = compose_env(services[name])
        # MinIO is only on the compose network: presigned URLs would not reach clients.
        assert env["AWS_ENDPOINT_URL"].startswith("http://minio:")
        assert env["MOTIONSERVE_FILE_DELIVERY"] == "proxy"


def test_compose_workers_get_gpus_and_time_to_drain() -> None:
    worker = compose()["services"]["worker"]
    (device,) = worker["deploy"]["resources"]["reservations"]["devices"]
    assert device["driver"] == "nvidia" and "gpu" in device["capabilities"]
    drain = float(compose_env(worker)["MOTIONSERVE_DRAIN_TIMEOUT_S"])
    assert seconds(worker["stop_grace_period"]) > drain


def test_dockerfile_installs_an_extra_that_exists() -> None:
    extras = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["optional-dependencies"]
    installed = re.findall(r'pip install "\.\[(\w+)\]"', (DEPLOY / "Dockerfile").read_text())
    assert installed == ["postgres"] and "postgres" in extras


# -- kubernetes manifests agree with each other ---------------------------------------------------


def test_worker_grace_period_outlasts_its_drain_timeout() -> None:
    worker = deployment_running("worker")
    grace = worker["spec"]["template"]["spec"]["terminationGracePeriodSeconds"]
    (container,) = [c for c in worker["spec"]["template"]["spec"]["containers"] if c["name"] == "worker"]
    drain = float({e["name"]: e.get("value") for e in container["env"]}["MOTIONSERVE_DRAIN_TIMEOUT_S"])
    assert grace > drain
    assert container["resources"]["limits"]["nvidia.com/gpu"] == 1


def test_worker_is_ready_once_its_preloads_are_loaded() -> None:
    """The probe asks the worker's own /ready, on the port its metrics setting opens; the pipelines it
    preloads are names the worker accepts (an unknown one would stop it before it starts)."""
    from motionserve.endpoints.registry import preload_endpoints

    worker = deployment_running("worker")
    (container,) = [c for c in worker["spec"]["template"]["spec"]["containers"] if c["name"] == "worker"]
    env = {e["name"]: e.get("value") for e in container["env"]}
    probe = container["readinessProbe"]["httpGet"]
    (port,) = [p for p in container["ports"] if p["name"] == probe["port"]]
    assert probe["path"] == "/ready" and port["containerPort"] == int(env["MOTIONSERVE_METRICS_PORT"])
    assert preload_endpoints(Settings(preload=env["MOTIONSERVE_PRELOAD"]).preload)
    compose_worker = compose()["services"]["worker"]
    assert preload_endpoints(Settings(preload=interpolate(compose_env(compose_worker)["MOTIONSERVE_PRELOAD"])).preload)
    assert "9100/ready" in " ".join(compose_worker["healthcheck"]["test"]) and "9100" in compose_worker["command"]


def test_api_has_two_replicas_and_a_health_readiness_probe() -> None:
    api = deployment_running("serve")
    assert api["spec"]["replicas"] == 2
    (container,) = api["spec"]["template"]["spec"]["containers"]
    assert container["readinessProbe"]["httpGet"]["path"] == "/health"
    (service,) = k8s_objects("Service")
    assert service["spec"]["selector"] == api["spec"]["selector"]["matchLabels"]


def test_every_secret_reference_names_an_existing_key() -> None:
    secrets = {s["metadata"]["name"]: set(s.get("stringData", {})) | set(s.get("data", {})) for s in k8s_objects("Secret")}
    refs = [e["valueFrom"]["secretKeyRef"] for d in k8s_objects("Deployment") for c in pod_containers(d)
            for e in c.get("env", []) if "secretKeyRef" in e.get("valueFrom", {})]
    refs += [r for a in k8s_objects("TriggerAuthentication") for r in a["spec"]["secretTargetRef"]]
    assert refs
    for ref in refs:
        assert ref["key"] in secrets.get(ref["name"], set()), ref


def scaled_objects() -> list[dict[str, Any]]:
    return k8s_objects("ScaledObject")


def test_scaled_objects_target_the_worker_deployment() -> None:
    worker_name = deployment_running("worker")["metadata"]["name"]
    assert {t["type"] for s in scaled_objects() for t in s["spec"]["triggers"]} == {"postgresql", "prometheus"}
    for scaled in scaled_objects():
        assert scaled["spec"]["scaleTargetRef"]["name"] == worker_name
        assert scaled["spec"]["minReplicaCount"] == 0


def postgresql_query() -> str:
    (trigger,) = [t for s in scaled_objects() for t in s["spec"]["triggers"] if t["type"] == "postgresql"]
    assert float(trigger["metadata"]["targetQueryValue"]) == 1
    assert "activationTargetQueryValue" in trigger["metadata"]
    return trigger["metadata"]["query"]


def run_keda_query(url: str) -> int:
    """Make the current schema at `url`, add jobs in every state, and run KEDA's query."""
    engine = create_engine(url)
    try:
        metadata.create_all(engine)
        now = time.time()
        with engine.begin() as conn:
            conn.execute(insert(jobs), [
                {"id": f"j{i}", "owner": "o", "endpoint_id": "e", "input": {}, "state": state,
                 "created_at": now, "base_url": "http://x"}
                for i, state in enumerate(["queued", "queued", "running", "succeeded", "failed", "cancelled"])
            ])
        with engine.connect() as conn:
            return conn.execute(text(postgresql_query())).scalar_one()
    finally:
        engine.dispose()


def test_keda_query_counts_waiting_and_running_jobs_on_sqlite(tmp_path: Path) -> None:
    count = run_keda_query(f"sqlite:///{tmp_path / 'keda.db'}")
    assert isinstance(count, int) and count == 3


def test_keda_query_counts_waiting_and_running_jobs_on_postgres(postgres_url: str) -> None:
    count = run_keda_query(postgres_url)  # KEDA runs it on PostgreSQL: this is the one that matters
    assert isinstance(count, int) and count == 3


def test_prometheus_scaler_queries_metrics_that_exist() -> None:
    (trigger,) = [t for s in scaled_objects() for t in s["spec"]["triggers"] if t["type"] == "prometheus"]
    exposed = {family.name for family in FleetCollector(create_engine("sqlite://"), stale_after_s=1).describe()}
    used = set(re.findall(r"\bmotionserve_\w+", trigger["metadata"]["query"]))
    assert used and used <= exposed, used - exposed
