"""The monitoring machines' wheelhouse: what pip is asked for, and pins that agree with
uv.lock (the controller's tests run the status page with the same versions the servers get)."""

from __future__ import annotations

import re
import tomllib

from hastack import paths, wheelhouse


def pins(text: str) -> dict[str, str]:
    return {m[1].lower().replace("_", "-"): m[2]
            for m in re.finditer(r"^([A-Za-z0-9_.-]+)==(\S+)", text, re.M)}


def test_monitoring_requirements_are_hashed_and_match_the_lock():
    text = wheelhouse.MONITORING_REQUIREMENTS.read_text()
    pinned = pins(text)
    assert {"httpx", "matplotlib", "numpy", "pillow"} <= set(pinned)
    # every requirement carries a hash (pip --require-hashes refuses the file otherwise)
    blocks = re.split(r"\n(?=[A-Za-z])", text[text.index(next(iter(pinned))):])
    assert all("--hash=sha256:" in b for b in blocks if "==" in b)
    lock = tomllib.loads((paths.REPO / "uv.lock").read_text())
    locked = {p["name"]: p["version"] for p in lock["package"]}
    assert {name: locked.get(name) for name in pinned} == pinned


def test_monitoring_wheels_are_for_the_servers_python_not_the_controllers(tmp_path):
    download, build = wheelhouse.monitoring_commands(tmp_path, "x86_64")
    assert download[1:4] == ["-m", "pip", "download"]
    for flag in ("--only-binary=:all:", "--require-hashes", "--no-deps"):
        assert flag in download
    assert download[download.index("--python-version") + 1] == "311"
    platforms = [download[i + 1] for i, a in enumerate(download) if a == "--platform"]
    assert "manylinux_2_28_x86_64" in platforms and "manylinux2014_x86_64" in platforms
    assert "manylinux_2_37_x86_64" not in platforms  # Debian 12 has glibc 2.36
    assert build[-1] == str(paths.REPO) and "--no-deps" in build  # hastack's own wheel only
    assert (tmp_path / "requirements.txt").read_text() == \
        wheelhouse.MONITORING_REQUIREMENTS.read_text()


def test_monitoring_hash_is_stable_and_follows_the_servers_architecture(monkeypatch):
    before = wheelhouse.monitoring_hash()
    assert before == wheelhouse.monitoring_hash()
    monkeypatch.setattr(wheelhouse, "server_arch", lambda: "aarch64")
    assert wheelhouse.monitoring_hash() != before
