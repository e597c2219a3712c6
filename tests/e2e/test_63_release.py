"""A new build of the site is a release: installed beside the running one on every app server,
then switched to and reloaded one server at a time, under load, with nothing failing; and
switching back to a release still kept reinstalls nothing.

The new build is the repository's site with one file added (so its code hash, the X-Version
it answers with, differs): built here into a wheelhouse of a private cache that `hastack
deploy` is pointed at (HASTACK_CACHE), as a release from another checkout would be.
"""

from __future__ import annotations

import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from hastack import paths, wheelhouse

from .conftest import load, run

CURRENT = "/opt/foobar/current"  # app_venv
TLS = "/etc/hastack/tls"         # hastack_machine_tls_dir


def served_version(lab, app: str) -> str:
    """X-Version of the app server's own gunicorn (as the roll's wait reads it)."""
    address = lab.machine(app)["addresses"][-1]
    return lab.ssh(app, f"curl -sS -o /dev/null -D - --cacert {TLS}/ca.crt --cert "
                        f"{TLS}/machine.crt --key {TLS}/machine.key https://{address}:8000/"
                        "healthz | tr -d '\\r' | sed -n 's/^[Xx]-[Vv]ersion: //p'").strip()


def release_of(lab, app: str) -> str:
    return lab.ssh(app, f"readlink {CURRENT}").strip()


@pytest.fixture(scope="module")
def other_build(tmp_path_factory) -> Path:
    """A cache whose site wheelhouse holds the changed build; the rest is the real cache's."""
    tmp = tmp_path_factory.mktemp("release")
    site = tmp / "site"
    shutil.copytree(paths.SITE_DIR, site, ignore=shutil.ignore_patterns(
        "tests", "build", "*.egg-info", "__pycache__"))
    (site / "src" / "foobar" / "release_note.py").write_text('"""A release of the test."""\n')
    cache = tmp / "cache"
    target = cache / "wheelhouse" / wheelhouse.site_hash()
    target.mkdir(parents=True)
    subprocess.run([sys.executable, "-m", "pip", "wheel", "--quiet", "--wheel-dir",
                    str(target), str(site)], check=True, capture_output=True)
    (target / "complete").write_text("")
    for kept in ("wheelhouse-monitoring", "images"):
        if (paths.cache_dir() / kept).exists():
            (cache / kept).symlink_to(paths.cache_dir() / kept)
    return cache


def deploy(lab, cache: Path | None = None) -> None:
    """A release is the app tier's business: `hastack deploy --limit app` rolls it out."""
    inventory = Path(lab.status["inventory"])
    run("deploy", "-i", str(inventory), "--secrets-dir", str(inventory.parent / "secrets"),
        "--limit", "app", env={"HASTACK_CACHE": str(cache or paths.cache_dir())})


def test_a_release_rolls_out_under_load_and_back_without_reinstalling(lab, other_build):
    apps = lab.names("app")
    before = {a: (release_of(lab, a), served_version(lab, a)) for a in apps}
    assert len({v for _, v in before.values()}) == 1, before

    with load(lab, lab.vips[0], "/", rate=40) as bg:
        deploy(lab, other_build)
    assert bg.result.failed == 0, [s for s in bg.result.samples if s.failed][:5]

    after = {a: (release_of(lab, a), served_version(lab, a)) for a in apps}
    new_versions = {v for _, v in after.values()}
    assert len(new_versions) == 1 and new_versions != {before[apps[0]][1]}, (before, after)
    for a in apps:
        assert after[a][0] != before[a][0], a
        assert after[a][0].startswith("/opt/foobar/releases/")
        # the previous release is kept, complete, to switch back to
        installed = lab.ssh(a, f"stat -c %Y {before[a][0]}/.installed").strip()
        assert installed.isdigit()

    # back to the repository's build: the kept release is switched to, not installed again
    marks = {a: lab.ssh(a, f"stat -c %Y {before[a][0]}/.installed").strip() for a in apps}
    with load(lab, lab.vips[1], "/", rate=40) as bg:
        deploy(lab)
    assert bg.result.failed == 0, [s for s in bg.result.samples if s.failed][:5]
    back = {served_version(lab, a) for a in apps}
    # the code of before (its version may have carried a build id a chaos run had set:
    # FOOBAR_BUILD is the environment's, not the release's)
    assert len(back) == 1 and back != new_versions, (back, new_versions)
    for a in apps:
        assert release_of(lab, a) == before[a][0]
        assert lab.ssh(a, f"stat -c %Y {before[a][0]}/.installed").strip() == marks[a]
