"""docker-compose.yml, Dockerfile and .env.example, checked without a Docker engine: the files
parse, every service runs a command the package really has, the settings they set exist, every
variable they use is documented, secrets fail fast, and the same commands work run directly."""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
import yaml
from typer.testing import CliRunner

from digitreader.settings import Settings

ROOT = Path(__file__).resolve().parents[1]
COMPOSE = ROOT / "docker-compose.yml"
ENV_EXAMPLE = ROOT / ".env.example"
DOCKERFILE = ROOT / "Dockerfile"
SECRETS = {"POSTGRES_PASSWORD", "REDIS_PASSWORD", "DIGITREADER_REVIEW_TOKEN", "SCANS_DIR"}


@pytest.fixture(scope="module")
def compose() -> dict[str, Any]:
    return yaml.safe_load(COMPOSE.read_text())


def _digitreader_services(compose: dict[str, Any]) -> dict[str, dict[str, Any]]:
    return {n: s for n, s in compose["services"].items() if "build" in s}


def test_services_and_their_roles(compose: dict[str, Any]) -> None:
    svc = compose["services"]
    assert {"redis", "postgres", "migrate", "page-worker", "infer-worker", "review"} <= set(svc)
    # Redis persists its queue; PostgreSQL is health-checked and everything waits for it.
    assert "--appendonly" in svc["redis"]["command"] and "yes" in svc["redis"]["command"]
    assert "healthcheck" in svc["redis"] and "healthcheck" in svc["postgres"]
    assert "pg_isready" in " ".join(svc["postgres"]["healthcheck"]["test"])
    assert svc["migrate"]["command"] == ["db", "upgrade"] and svc["migrate"]["restart"] == "no"
    assert svc["migrate"]["depends_on"]["postgres"]["condition"] == "service_healthy"
    for name in ("page-worker", "infer-worker", "review"):
        assert svc[name]["depends_on"]["migrate"]["condition"] == "service_completed_successfully"
    assert svc["page-worker"]["command"] == ["worker", "--pool", "page"]
    assert "replicas" in svc["page-worker"]["deploy"]  # scalable
    infer = svc["infer-worker"]
    assert infer["command"] == ["worker", "--pool", "infer"]
    devices = infer["deploy"]["resources"]["reservations"]["devices"]
    assert devices[0]["driver"] == "nvidia" and devices[0]["capabilities"] == ["gpu"]
    assert "gpu" in infer["build"]["args"]["FLAVOUR"]  # the onnxruntime-gpu flavour
    assert svc["review"]["command"][:3] == ["review", "--host", "0.0.0.0"]


def test_settings_named_in_compose_exist(compose: dict[str, Any]) -> None:
    fields = set(Settings.model_fields)
    for name, s in _digitreader_services(compose).items():
        for key in s["environment"]:
            if key.startswith("DIGITREADER_"):
                assert key[len("DIGITREADER_") :].lower() in fields, f"{name}: {key} is not a setting"


def test_every_variable_is_documented_and_secrets_fail_fast() -> None:
    text = "\n".join(line for line in COMPOSE.read_text().splitlines() if not line.lstrip().startswith("#"))
    used = set(re.findall(r"\$\{([A-Z0-9_]+)", text))
    documented = set(re.findall(r"^([A-Z0-9_]+)=", ENV_EXAMPLE.read_text(), re.M))
    assert used - documented == set(), f"not in .env.example: {sorted(used - documented)}"
    for var in SECRETS:
        refs = re.findall(r"\$\{" + var + r"(:[?-][^}]*)?\}", text)
        assert refs and all(r.startswith(":?") for r in refs), f"{var} must be ${{{var}:?...}} everywhere"
    # No literal secret in the compose file: every password/token value is a variable.
    for line in text.splitlines():
        if re.search(r"(?i)(password|token)\s*:", line) and not line.strip().startswith("#"):
            assert "${" in line, line


@pytest.mark.parametrize("service", ["migrate", "page-worker", "infer-worker", "review", "cli"])
def test_service_commands_exist_in_the_cli(compose: dict[str, Any], service: str) -> None:
    from digitreader.cli.main import app

    command = compose["services"][service]["command"]
    args = [a for a in command if a != "--help"] + ["--help"]
    res = CliRunner().invoke(app, args)
    assert res.exit_code == 0, res.output


def test_same_commands_run_directly(tmp_path: Path, compose: dict[str, Any]) -> None:
    """`db upgrade` for real (on SQLite), the workers' celery command lines (--dry-run): the
    entry point the image uses (ENTRYPOINT digitreader) with the services' arguments."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("DIGITREADER_")}
    env.update(DIGITREADER_HOME=str(tmp_path), DIGITREADER_BROKER_URL="redis://127.0.0.1:6379/0")
    dr = [sys.executable, "-m", "digitreader"]
    up = subprocess.run(dr + compose["services"]["migrate"]["command"], env=env, capture_output=True, text=True)
    assert up.returncode == 0, up.stderr
    assert (tmp_path / "digitreader.sqlite").exists()
    for service, queue in (("page-worker", "pages"), ("infer-worker", "infer")):
        cmd = compose["services"][service]["command"]
        res = subprocess.run(dr + cmd + ["--dry-run"], env=env, capture_output=True, text=True)
        assert res.returncode == 0, res.stderr
        assert res.stdout.startswith("celery -A workers.app worker") and f"-Q {queue}" in res.stdout
    # Without a broker the worker refuses with a usage error (exit 2), not a traceback.
    del env["DIGITREADER_BROKER_URL"]
    res = subprocess.run(dr + ["worker", "--pool", "page"], env=env, capture_output=True, text=True)
    assert res.returncode == 2 and "DIGITREADER_BROKER_URL" in res.stderr


def test_dockerfile_flavours() -> None:
    text = DOCKERFILE.read_text()
    assert re.search(r"^ARG FLAVOUR=cpu$", text, re.M)
    assert 'pip install ".[${FLAVOUR}]"' in text
    assert 'ENTRYPOINT ["digitreader"]' in text
    assert "COPY migrations" in text  # `db upgrade` needs them in the image
    import tomllib

    extras = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["optional-dependencies"]
    assert any(d.startswith("onnxruntime-gpu") for d in extras["gpu"])
    assert any(d.startswith("onnxruntime") and "gpu" not in d for d in extras["cpu"])
    ignored = (ROOT / ".dockerignore").read_text().split()
    assert ".venv" in ignored and ".env" in ignored  # no local venv or secrets in the image


def _copied_before_first_install(text: str) -> list[str]:
    """The build-context paths the Dockerfile copies before its first `pip install`, each checked to
    land at the same path under WORKDIR (as the project's own layout)."""
    sources: list[str] = []
    logical = re.sub(r"\\\n", " ", text)  # continuation lines joined: one instruction a line
    for line in logical.splitlines():
        line = line.strip()
        if line.startswith("RUN") and "pip install" in line:
            break
        if line.startswith("COPY "):
            *src, dest = line.split()[1:]
            for s in src:
                target = dest.rstrip("/") + "/" + Path(s).name if dest.endswith("/") else dest
                assert os.path.normpath(target) == os.path.normpath(s), line
                sources.append(os.path.normpath(s))
    return sources


def test_dockerfile_dependency_layer_has_every_file_the_build_needs() -> None:
    """The first `pip install ".[FLAVOUR]"` builds the wheel from what is copied so far: every file
    pyproject.toml names (the C extension's sources, the data files: the migrations) must be there,
    or the image does not build. (It once failed so: the migrations were copied after it.)"""
    import glob
    import tomllib

    tool = tomllib.loads((ROOT / "pyproject.toml").read_text())["tool"]["setuptools"]
    needed = [src for ext in tool.get("ext-modules", []) for src in ext["sources"]]
    for patterns in tool.get("data-files", {}).values():
        for pattern in patterns:
            found = glob.glob(pattern, root_dir=ROOT)
            assert found, pattern
            needed += found
    copied = _copied_before_first_install(DOCKERFILE.read_text())
    assert "pyproject.toml" in copied and "README.md" in copied
    for path in needed:
        assert any(path == c or path.startswith(c + "/") for c in copied), f"{path} is not in the dependency layer"
