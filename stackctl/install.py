"""Idempotent installs: Debian packages, the pinned venv, and Maven-fetched jars."""

from __future__ import annotations

import hashlib
import logging
import os
import shutil
import subprocess
import sys
from pathlib import Path

from stackctl.config import ROOT, SPARK_KAFKA_PREFIXES, Settings

log = logging.getLogger(__name__)

# What the venv needs to build (mysqlclient): enough for `make test-unit` and `make lint`.
BUILD_PACKAGES = ["default-libmysqlclient-dev", "pkg-config", "build-essential"]
DEBIAN_PACKAGES = ["mariadb-server", "postgresql", "redis-server", "mariadb-client"]
# Only tests need these: the browser tests of the live view, the compose file check.
DEBIAN_TEST_PACKAGES = ["chromium", "docker-compose"]


def _missing_debs(packages: list[str]) -> list[str]:
    missing = []
    for pkg in packages:
        res = subprocess.run(
            ["dpkg-query", "-W", "-f=${Status}", pkg], capture_output=True, text=True
        )
        if "install ok installed" not in res.stdout:
            missing.append(pkg)
    return missing


def debian(with_test_packages: bool = False, python_only: bool = False) -> None:
    packages = BUILD_PACKAGES
    if not python_only:
        packages = packages + DEBIAN_PACKAGES
        packages += DEBIAN_TEST_PACKAGES if with_test_packages else []
    missing = _missing_debs(packages)
    if not missing:
        return
    sudo = [] if os.geteuid() == 0 else ["sudo"]
    log.info("installing Debian packages: %s", " ".join(missing))
    env = dict(os.environ, DEBIAN_FRONTEND="noninteractive")
    subprocess.run([*sudo, "apt-get", "update", "-qq"], check=True, env=env)
    subprocess.run(
        [*sudo, "apt-get", "install", "-y", "-qq", "--no-install-recommends", *missing],
        check=True,
        env=env,
    )


def _digest(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()[:16]


def venv(s: Settings) -> Path:
    """Create .state/venv with requirements.txt; re-install only when the file changed."""
    req = ROOT / "requirements.txt"
    python = s.venv / "bin" / "python"
    stamp = s.venv / ".requirements.sha"
    if python.exists() and stamp.exists() and stamp.read_text() == _digest(req):
        editable(s)
        return python
    log.info("installing the pinned Python environment into %s", s.venv)
    if not python.exists():
        subprocess.run([sys.executable, "-m", "venv", str(s.venv)], check=True)
    pip = [str(python), "-m", "pip", "install", "-q", "--disable-pip-version-check"]
    subprocess.run([*pip, "--upgrade", "pip"], check=True)
    subprocess.run([*pip, "-r", str(req)], check=True)
    # The spark provider's pyspark-client writes the same files as pyspark: reinstall
    # pyspark last so its python side matches its jars (a unit test checks both).
    pin = next(
        line.strip() for line in req.read_text().splitlines() if line.startswith("pyspark==")
    )
    subprocess.run([*pip, "--force-reinstall", "--no-deps", pin], check=True)
    stamp.write_text(_digest(req))
    editable(s)
    return python


def editable(s: Settings) -> None:
    """The project itself (`regstream`, `stackctl`, the `regstream` command), editable, so
    the DAGs, the Spark job, tests and benchmarks import it the same way, without PYTHONPATH."""
    python = s.venv / "bin" / "python"
    stamp = s.venv / ".project.sha"
    digest = _digest(ROOT / "pyproject.toml") + str(ROOT)
    if stamp.exists() and stamp.read_text() == digest:
        return
    log.info("installing the project (editable) into %s", s.venv)
    subprocess.run(
        [
            str(python),
            "-m",
            "pip",
            "install",
            "-q",
            "--disable-pip-version-check",
            "--no-deps",
            "-e",
            str(ROOT),
        ],
        check=True,
    )
    stamp.write_text(digest)


def _maven_copy(pom: Path, out: Path) -> None:
    tmp = out.with_name(out.name + ".tmp")
    shutil.rmtree(tmp, ignore_errors=True)
    subprocess.run(
        [
            "mvn",
            "-B",
            "-q",
            "-f",
            str(pom),
            "org.apache.maven.plugins:maven-dependency-plugin:3.6.1:copy-dependencies",
            "-DincludeScope=runtime",
            f"-DoutputDirectory={tmp}",
        ],
        check=True,
    )
    shutil.rmtree(out, ignore_errors=True)
    tmp.rename(out)


def jars(s: Settings) -> None:
    maven = ROOT / "stackctl" / "maven"
    for name in ("kafka-broker", "spark-kafka"):
        pom = maven / f"{name}.pom.xml"
        out = s.jars / name
        stamp = out / ".pom.sha"
        if stamp.exists() and stamp.read_text() == _digest(pom):
            continue
        if shutil.which("mvn") is None:
            raise SystemExit("Maven (mvn) is required to fetch the Kafka and Spark jars")
        log.info("fetching %s jars from Maven Central into %s", name, out)
        _maven_copy(pom, out)
        if name == "spark-kafka":
            # Keep only what pyspark's own jars/ lacks: two copies of a jar on the
            # classpath at different versions is how NoSuchMethodError starts.
            for jar in out.glob("*.jar"):
                if not jar.name.startswith(SPARK_KAFKA_PREFIXES):
                    jar.unlink()
        stamp.write_text(_digest(pom))


def everything(s: Settings, with_test_packages: bool = False, python_only: bool = False) -> Path:
    """Debian packages, the venv and the jars; `python_only`: the venv and what builds it."""
    debian(with_test_packages, python_only)
    python = venv(s)
    if not python_only:
        jars(s)
    return python
