"""/healthz says which code answers: what a rolling deploy waits for."""

from __future__ import annotations

import re
import shutil
import time
import tomllib
from pathlib import Path

import pytest

import foobar
from conftest import offline_env
from foobar.app import create_app
from foobar.config import Config, ConfigError
from foobar.version import PACKAGE_DIR, code_hash, running_version

SITE_DIR = Path(__file__).resolve().parent.parent


def client_for(**env):
    app = create_app(offline_env(**env))
    app.testing = True
    return app.test_client()


def test_the_package_version_is_the_distribution_version():
    with open(SITE_DIR / "pyproject.toml", "rb") as f:
        assert tomllib.load(f)["project"]["version"] == foobar.__version__


def test_healthz_names_the_version_and_stays_plain_text(offline_client):
    response = offline_client.get("/healthz")
    assert (response.status_code, response.text, response.mimetype) == (200, "ok\n", "text/plain")
    assert re.fullmatch(rf"{re.escape(foobar.__version__)}\+[0-9a-f]{{12}}",
                        response.headers["X-Version"])
    assert response.headers["X-Version"] == running_version()
    assert response.headers["Cache-Control"] == "no-store"
    assert offline_client.get("/healthz", headers={"Accept": "*/*"}).text == "ok\n"


def test_healthz_answers_json_to_a_client_that_asks_for_it(offline_client):
    response = offline_client.get("/healthz", headers={"Accept": "application/json"})
    assert response.status_code == 200
    assert response.get_json() == {
        "status": "ok",
        "version": response.headers["X-Version"],
        "machine": "app9",
    }


def test_a_build_id_from_the_environment_replaces_the_code_hash():
    response = client_for(FOOBAR_BUILD="2026.11.28-ab12cd3").get("/healthz")
    assert response.headers["X-Version"] == f"{foobar.__version__}+2026.11.28-ab12cd3"


@pytest.mark.parametrize("build", ["has space", "x" * 65, "semi;colon", "caf\u00e9"])
def test_a_malformed_build_id_stops_start_up(build):
    with pytest.raises(ConfigError, match="FOOBAR_BUILD"):
        Config.from_env(offline_env(FOOBAR_BUILD=build))


def test_the_code_hash_changes_with_any_file_of_the_package(tmp_path):
    copy = tmp_path / "foobar"
    shutil.copytree(PACKAGE_DIR, copy, ignore=shutil.ignore_patterns("__pycache__"))
    assert code_hash(copy) == code_hash(PACKAGE_DIR)
    (copy / "__pycache__").mkdir(exist_ok=True)
    (copy / "__pycache__" / "x.cpython-311.pyc").write_bytes(b"bytecode")
    assert code_hash(copy) == code_hash(PACKAGE_DIR)  # bytecode is not code
    css = copy / "static" / "style.css"
    css.write_text(css.read_text() + "\n/* changed */\n")
    assert code_hash(copy) != code_hash(PACKAGE_DIR)


def test_healthz_is_fast_and_needs_no_database(offline_client):
    # Offline: the database ports refuse connections, and nothing waits on them.
    times = []
    for _ in range(200):
        started = time.monotonic()
        assert offline_client.get("/healthz").status_code == 200
        times.append(time.monotonic() - started)
    assert sorted(times)[int(len(times) * 0.99)] < 0.05
    router = offline_client.application.extensions["foobar"].router
    assert router.health.snapshot().round == 0  # no health check was ever needed
