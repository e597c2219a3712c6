"""Operations on real servers (`-i INVENTORY`), with the running lab standing in for them.

The lab's inventory file already carries what Ansible needs to connect (user, key, known
hosts), so a copy of it is what a user would write for these servers: every command run
through it must see what the same command sees through the lab. Only read-only commands.
"""

from __future__ import annotations

import json
import re
import shutil
from pathlib import Path

import pytest

from .conftest import poll, run


@pytest.fixture(scope="module")
def servers(lab, tmp_path_factory) -> tuple[str, ...]:
    """`-i COPY --secrets-dir LAB_SECRETS`: the lab's machines as if they were servers."""
    source = Path(lab.status["inventory"])
    copy = tmp_path_factory.mktemp("servers") / "servers.yml"
    shutil.copy(source, copy)
    return ("-i", str(copy))


@pytest.fixture(scope="module")
def secrets(lab) -> tuple[str, ...]:
    return ("--secrets-dir", str(Path(lab.status["inventory"]).parent / "secrets"))


def _seen(status: dict) -> dict:
    return {m["name"]: (m["roles"], m["addresses"]) for m in status["machines"]}


def _holders(status: dict) -> dict:
    return {vip: v["holders"] for vip, v in status["monitoring"]["vips"].items()}


def test_status_sees_the_same_machines_and_vip_holders(lab, servers, secrets):
    def both() -> tuple[dict, dict] | None:
        mine = json.loads(run("status", *servers, *secrets, "--json").stdout)
        labs = json.loads(run("status", "--json").stdout)
        return (mine, labs) if _holders(mine) == _holders(labs) else None

    mine, labs = poll(both, 30, "the same VIP holders twice in a row", interval=1)
    assert _seen(mine) == _seen(labs)
    assert mine["site"] == labs["site"]  # domain, vips, dns, ca_cert (the lab's CA)
    assert all(holders for holders in _holders(mine).values())
    # hastack did not make these machines: their state is what monitoring sees
    assert {m["state"] for m in mine["machines"]} == {"up"}
    assert {m["state"] for m in labs["machines"]} == {"running"}


def test_db_status_is_the_labs(servers):
    volatile = ("threads_running",)  # our own query counts among them

    def same() -> dict | None:
        mine = json.loads(run("db", "status", *servers, "--json").stdout)
        labs = json.loads(run("db", "status", "--json").stdout)
        strip = [[{k: v for k, v in n.items() if k not in volatile} for n in x["nodes"]]
                 for x in (mine, labs)]
        # the cluster engine's view too: each node's quorum, the members Pacemaker sees
        engines = [(x["cluster"].get("members"),
                    [n["name"] for n in x["cluster"].get("view", {}).get("nodes", [])])
                   for x in (mine, labs)]
        return mine if strip[0] == strip[1] and engines[0] == engines[1] else None

    status = poll(same, 30, "db status through the inventory equal to the lab's", interval=1)
    nodes = status["nodes"]
    assert {n["role"] for n in nodes} >= {"primary"}
    assert all(not n["error"] for n in nodes)


def test_ssh_runs_the_argv_on_the_server(servers):
    assert run("ssh", *servers, "db1", "--", "mariadb", "-N", "-e", "select 1").stdout == "1\n"
    assert run("ssh", *servers, "web2", "--", "hostname").stdout.strip() == "web2"


def test_lb_status_lists_every_web_server_on_every_lb(lab, servers):
    table = run("lb", "status", *servers).stdout
    for lb in lab.names("loadbalancer"):
        for web in lab.names("web"):
            assert re.search(rf"\b{lb}\b.*\b{web}\b.*\b(UP|DOWN|MAINT|DRAIN|NOLB)", table), table


def test_lb_bans_are_the_labs(servers):
    assert run("lb", "bans", *servers).stdout == run("lb", "bans").stdout
