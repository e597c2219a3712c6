"""The hastack command: parsing and printing only; the work happens in the modules it calls."""

from __future__ import annotations

import json
import os
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Annotated

import typer
from rich.console import Console, Group
from rich.live import Live
from rich.table import Table
from rich.text import Text

from hastack import backup, cluster, db, dbreseed, dbrestart, lb, promotion, topology
from hastack import bench as benchmark
from hastack import status as monitoring_status
from hastack.errors import HastackError
from hastack.fleet import Fleet, InventoryFleet
from hastack.lab.lab import Lab, prepare_caches, require_root

app = typer.Typer(add_completion=False, no_args_is_help=True, pretty_exceptions_show_locals=False,
                  help="A highly available www.foobar.com: a one-box lab or your own servers.")
# Progress and results go to stdout; stderr carries only the one-line error, if any.
out = Console(soft_wrap=True)
err = Console(stderr=True, soft_wrap=True)

TopologyOpt = Annotated[Path | None, typer.Option(
    "-t", "--topology", help="topology file (TOML); default: ./hastack.toml if present, else "
                             "the running lab's topology, else the seed's")]


InventoryOpt = Annotated[Path | None, typer.Option(
    "-i", "--inventory", help="work on the servers of this Ansible inventory (default: the lab)")]
SecretsOpt = Annotated[Path | None, typer.Option(
    "--secrets-dir", help="the inventory's generated secrets (default: next to the inventory, "
                          "in .hastack-secrets/<inventory name>/)")]


def _fleet(inventory: Path | None, secrets_dir: Path | None = None) -> Fleet:
    """The machines a command works on: an inventory's servers if one is given, else the
    lab's."""
    return InventoryFleet(inventory, secrets_dir) if inventory is not None else Lab()


def _topology(path: Path | None, lab: Lab) -> topology.Topology:
    """An explicit file wins; then ./hastack.toml; then the lab as it is; then the seed."""
    default = Path("hastack.toml")
    if path is None and default.exists():
        path = default
    if path is not None:
        return topology.load(path)
    return lab.topology() or topology.load(None)


@app.command()
def up(topology_file: TopologyOpt = None,
       force_deploy: Annotated[bool, typer.Option(help="deploy even if nothing changed")] = False,
       ) -> None:
    """Create (or repair) the lab's machines and deploy the stack on them."""
    require_root("up")
    lab = Lab()
    topo = _topology(topology_file, lab)
    lab.up(topo, out, force_deploy=force_deploy)
    vips = " ".join(str(v.address) for v in topo.vips)
    out.print(f"[bold green]{topo.domain} is up[/bold green] on {vips}")
    first = topo.vips[0].address
    out.print(f"  try: curl --cacert {lab.ca_cert()} --resolve {topo.domain}:443:{first} "
              f"https://{topo.domain}/")
    dns = topo.with_role("dns")
    if dns:
        out.print(f"  DNS: dig @{dns[0].public_address} {topo.domain}")
    out.print("  machines: hastack status · shell: hastack ssh web1 · remove: hastack down")


@app.command()
def prepare(topology_file: TopologyOpt = None) -> None:
    """Build the lab image and the wheelhouses `up` needs, and nothing else (no machines):
    e.g. in CI while other tests run, so the next `up` finds them ready."""
    try:
        topo = _topology(topology_file, Lab())
    except HastackError:
        if topology_file is not None or Path("hastack.toml").exists():
            raise
        # an unreadable lab record, which `down` clears (the e2e tests' first step): the
        # topology only says whether monitoring's wheelhouse is needed, so take the seed's
        topo = topology.load(None)
    prepare_caches(topo, out)
    out.print("lab image and wheelhouses ready")


@app.command()
def down() -> None:
    """Remove every machine, overlay, bridge, veth and cgroup of the lab (also after a crash)."""
    Lab().down()
    out.print("lab removed")


@app.command()
def stop(machines: Annotated[list[str] | None, typer.Argument(help="machines (default: all)")]
         = None,
         kill: Annotated[bool, typer.Option("--kill", help="pull the plug (SIGKILL) instead "
                                                          "of a clean power-off")] = False,
         ) -> None:
    """Power lab machines off, keeping their disks; `hastack up` starts them again."""
    stopped = Lab().stop(machines, graceful=not kill)
    out.print(f"stopped {', '.join(stopped)}")


@app.command()
def start(machines: Annotated[list[str], typer.Argument(help="machines to boot")]) -> None:
    """Boot stopped lab machines again (no deploy; `hastack up` also deploys)."""
    Lab().start(machines)
    out.print(f"started {', '.join(machines)}")


@app.command()
def status(as_json: Annotated[bool, typer.Option("--json", help="one JSON object")] = False,
           watch: Annotated[float | None, typer.Option(
               "--watch", help="refresh in place every N seconds (Ctrl-C stops)")] = None,
           inventory: InventoryOpt = None, secrets_dir: SecretsOpt = None,
           ) -> None:
    """The site, its machines and what monitoring sees: daemons, VIPs, backends, databases,
    firing alerts, traffic.

    A machine's state is the lab's (running, stopped) or, for an inventory's servers, what
    monitoring sees of it (up, down, unknown).
    """
    fleet = _fleet(inventory, secrets_dir)
    if watch is not None:
        if watch <= 0:
            raise HastackError("--watch takes a number of seconds above 0, e.g. --watch 2")
        with Live(_status_view(fleet), console=out, screen=False, auto_refresh=False) as live:
            while True:
                time.sleep(watch)
                live.update(_status_view(fleet), refresh=True)
    info = _status_info(fleet)
    if as_json:
        out.print_json(json.dumps(info)) if sys.stdout.isatty() else print(json.dumps(info))
        return
    out.print(_status_view(fleet, info))


def _status_info(fleet: Fleet) -> dict:
    monitoring = monitoring_status.collect(fleet.require_topology())
    return monitoring_status.merge(fleet.status(monitoring), monitoring)


def _status_view(fleet: Fleet, info: dict | None = None) -> Group:
    info = info or _status_info(fleet)
    site = info["site"]
    head = Text.from_markup(f"[bold]{site['domain']}[/bold]  VIPs {', '.join(site['vips'])}"
                            + (f"  DNS {site['dns']}" if site["dns"] else ""))
    table = Table("machine", "roles", "addresses", "state", "health", "daemons")
    colours = {"running": "green", "up": "green", "ok": "green", "degraded": "yellow",
               "unknown": "yellow"}
    for m in info["machines"]:
        daemons = " ".join(f"{name}:{state}" for name, state in sorted(m["daemons"].items())
                           if state != "active") or "all active"
        cells = [f"[{colours.get(v, 'red')}]{v}[/]" for v in (m["state"], m["health"])]
        table.add_row(m["name"], ", ".join(m["roles"]), ", ".join(m["addresses"]), *cells,
                      daemons)
    lines = monitoring_status.summary_lines(info["monitoring"])
    return Group(head, table, Text("\n".join(lines)))


@app.command(context_settings={"allow_extra_args": True, "ignore_unknown_options": True})
def ssh(machine: Annotated[str, typer.Argument(help="machine name, e.g. web1")],
        command: Annotated[list[str] | None, typer.Argument(help="command to run")] = None,
        inventory: InventoryOpt = None,
        ) -> None:
    """Open a shell on a machine, or run a command there (hastack ssh db1 -- mariadb).

    Several arguments run as exactly that argv, quoting kept; a single one is a shell line,
    e.g. -- 'systemctl status nginx | head'. With -i, the server is reached as Ansible
    reaches it (and a command runs under sudo if the inventory says ansible_become).
    """
    os.execvp("ssh", _fleet(inventory).ssh_argv(machine, command))


@app.command("deploy")
def deploy_cmd(inventory: Annotated[Path, typer.Option("-i", "--inventory",
                                                       help="Ansible inventory of your servers")],
               secrets_dir: Annotated[Path | None, typer.Option(
                   help="where generated secrets live (default: next to the inventory, "
                        "in .hastack-secrets/)")] = None,
               limit: Annotated[str | None, typer.Option(help="only these hosts/groups")] = None,
               ) -> None:
    """Deploy the stack to real servers listed in an inventory (same playbook as the lab)."""
    InventoryFleet(inventory, secrets_dir).deploy(out, limit=limit)


lb_app = typer.Typer(no_args_is_help=True, help="The load balancers' view of the web tier.")
app.add_typer(lb_app, name="lb")


@lb_app.command("drain")
def lb_drain(server: Annotated[str, typer.Argument(help="web server, e.g. web1")],
             wait: Annotated[float, typer.Option(help="seconds to wait for it to go idle")]
             = 30.0, inventory: InventoryOpt = None) -> None:
    """Stop sending new requests to a web server (on every LB); wait for it to go idle."""
    took = lb.drain(_fleet(inventory), server, wait)
    out.print(f"{server} drained on every load balancer ({took:.1f} s)")


@lb_app.command("enable")
def lb_enable(server: Annotated[str, typer.Argument(help="web server, e.g. web1")],
              inventory: InventoryOpt = None) -> None:
    """Put a drained web server back into rotation (on every LB)."""
    lb.enable(_fleet(inventory), server)
    out.print(f"{server} enabled on every load balancer")


@lb_app.command("status")
def lb_status(inventory: InventoryOpt = None) -> None:
    """Each LB's view of each web server: state, health check, requests in flight."""
    fleet = _fleet(inventory)
    table = Table("lb", "server", "status", "check", "in flight", "total requests")
    for name in [m.name for m in fleet.require_topology().with_role("loadbalancer")]:
        for server, row in lb.server_stats(fleet, name).items():
            table.add_row(name, server, row["status"], row["check_status"], row["scur"],
                          row["stot"])
    out.print(table)


@lb_app.command("bans")
def lb_bans(inventory: InventoryOpt = None) -> None:
    """Client addresses banned at the edge (fail2ban, shared by every LB)."""
    for name, addresses in lb.bans(_fleet(inventory)).items():
        out.print(f"{name}: {', '.join(addresses) or 'no bans'}")


@lb_app.command("unban")
def lb_unban(address: Annotated[str, typer.Argument(help="client address, e.g. 198.18.0.250")],
             inventory: InventoryOpt = None) -> None:
    """Let a banned client in again, on every load balancer."""
    lb.unban(_fleet(inventory), address)
    out.print(f"{address} unbanned on every load balancer")


db_app = typer.Typer(no_args_is_help=True, help="The MariaDB primary-replica cluster.")
app.add_typer(db_app, name="db")


@db_app.command("status")
def db_status(as_json: Annotated[bool, typer.Option(
                  "--json", help="one JSON object: nodes, cluster")] = False,
              inventory: InventoryOpt = None) -> None:
    """Each database node: role, GTID positions, replication threads, lag, semi-sync; and
    the cluster engine's view (quorum, fencing, resources, failcounts)."""
    fleet = _fleet(inventory)
    with ThreadPoolExecutor(1) as pool:  # the cluster's view while the nodes are asked
        asked = pool.submit(cluster.status, fleet)
        nodes = db.status_dicts(fleet)
        engine = asked.result()
    if as_json:
        print(json.dumps({"nodes": nodes, "cluster": engine}))
        return
    table = Table("node", "role", "read only", "GTID (binlog)", "replicates from", "IO/SQL",
                  "lag s", "semi-sync", "threads running")
    for n in nodes:
        semi = n["semi_sync"] + ("" if n["semi_sync_replicas"] is None
                                 else f" ({n['semi_sync_replicas']} acking)")
        if n["role"] == "primary" and n["semi_sync"] == "off":
            semi = f"[bold red]{semi}: async[/]"
        table.add_row(n["name"], n["role"], str(n["read_only"]), n["gtid_binlog_pos"],
                      n["replicating_from"], f"{n['io_running']}/{n['sql_running']}".strip("/"),
                      "" if n["lag_seconds"] is None else str(n["lag_seconds"]), semi,
                      "" if n["threads_running"] is None else str(n["threads_running"]))
    out.print(table)
    for n in nodes:
        if n["replication_error"]:
            hint = (f" (its data diverged from the primary's: `hastack db reseed {n['name']}`)"
                    if n["diverged"] else "")
            out.print(f"{n['name']}: replication error {n['replication_error']}{hint}",
                      highlight=False, markup=False)
    pending = [n["name"] for n in nodes if n["restart_pending"]]
    if pending:
        out.print(f"restart pending (configuration changed since the server started): "
                  f"{', '.join(pending)}; `hastack db restart`", highlight=False)
    for line in cluster.summary_lines(engine):
        out.print(line, highlight=False, markup=False, emoji=False)


@db_app.command("backup")
def db_backup(inventory: InventoryOpt = None) -> None:
    """Take a full backup now (from a replica when one is fit), as the schedule does."""
    taken = backup.take(_fleet(inventory))
    out.print(f"backup {taken['name']} taken from {taken['source']} ({taken['source_role']}) "
              f"at GTID {taken['gtid'] or '-'}: {taken['bytes'] / 2**20:.1f} MiB in "
              f"{taken['seconds']:.1f} s (copy {taken['copy_seconds']:.1f} s, prepare "
              f"{taken['prepare_seconds']:.1f} s)")


@db_app.command("backups")
def db_backups(as_json: Annotated[bool, typer.Option("--json", help="one JSON array")] = False,
               inventory: InventoryOpt = None) -> None:
    """The complete full backups kept on the backup machine, oldest first."""
    kept = backup.listing(_fleet(inventory))
    if as_json:
        print(json.dumps(kept))
        return
    table = Table("backup", "source", "GTID", "MiB", "took s")
    for b in kept:
        table.add_row(b["name"], f"{b['source']} ({b['source_role']})", b["gtid"] or "-",
                      f"{b['bytes'] / 2**20:.1f}", f"{b['seconds']:.1f}")
    out.print(table)


@db_app.command("restore")
def db_restore(to: Annotated[str, typer.Option(
                   "--to", help="a GTID (0-41-1234) or a UTC time (2026-11-28T09:40:00Z)")],
               as_json: Annotated[bool, typer.Option("--json", help="one JSON object")] = False,
               inventory: InventoryOpt = None) -> None:
    """Point-in-time restore on the backup machine: the newest backup before --to plus the
    copied binary logs up to it, into a data directory a throwaway server checks."""
    done = backup.restore(_fleet(inventory), to)
    if as_json:
        print(json.dumps(done))
        return
    out.print(f"restored {done['backup']} + {done['applied']} transactions of "
              f"{done['binlogs_from']}'s binary logs to GTID {done['restored_to_gtid']} in "
              f"{done['seconds']:.1f} s: {done['datadir']}")
    table = Table("table", "rows", "CHECKSUM TABLE")
    for name, t in done["tables"].items():
        table.add_row(name, str(t["rows"]), str(t["checksum"]))
    out.print(table)


@db_app.command("drill")
def db_drill(inventory: InventoryOpt = None) -> None:
    """Restore drill now (as its daily timer does): the newest backup plus the copied binlogs
    restored to a replica's position, each table's checksum compared with the replica's."""
    done = backup.drill(_fleet(inventory))
    out.print(f"restore drill passed: {done['backup']} + {done['applied']} transactions "
              f"restored to {done['replica']}'s GTID {done['gtid']} in "
              f"{done['restore_seconds']:.1f} s; {len(done['tables'])} tables equal "
              f"(CHECKSUM TABLE)")


@db_app.command("switchover")
def db_switchover(target: Annotated[str, typer.Argument(help="replica to promote, e.g. db2")],
                  inventory: InventoryOpt = None) -> None:
    """Planned promotion of a replica to primary, through the cluster, losing no acknowledged
    write. Nothing is recorded: the inventory's db_primary names only the first primary."""
    db.switchover(_fleet(inventory), target, out)


@db_app.command("auto-failover")
def db_auto_failover(state: Annotated[str, typer.Argument(
                         help="on: the cluster promotes a replica by itself when the primary "
                              "is lost (the default); off: writes wait for `hastack db "
                              "failover`")],
                     inventory: InventoryOpt = None) -> None:
    """Turn the cluster's automatic promotion of a replica on or off."""
    if state not in ("on", "off"):
        raise HastackError(f"auto-failover takes 'on' or 'off', not '{state}'")
    promotion.set_automatic(_fleet(inventory), state == "on", out)


@db_app.command("failover")
def db_failover(target: Annotated[str | None, typer.Argument(
                    help="replica to promote (default: the one holding the last "
                         "acknowledged write)")] = None,
                force: Annotated[bool, typer.Option(
                    help="promote although a node that does not answer, or another "
                         "replica, may hold later acknowledged writes")] = False,
                inventory: InventoryOpt = None) -> None:
    """Promote a replica after the primary is lost, while automatic failover is off: the
    cluster fences the old primary if it still counts as running, then promotes."""
    promotion.failover(_fleet(inventory), out, target, force)


@db_app.command("reseed")
def db_reseed(node: Annotated[str, typer.Argument(help="the replica to re-seed, e.g. db2")],
              inventory: InventoryOpt = None) -> None:
    """Replace a replica's data that can no longer follow the primary (diverged) by a fresh
    full backup, through the cluster; its old data is kept aside on the node."""
    dbreseed.reseed(_fleet(inventory), node, out)


@db_app.command("restart")
def db_restart(nodes: Annotated[list[str] | None, typer.Argument(
                   help="only these nodes (default: every DB node)")] = None,
               inventory: InventoryOpt = None) -> None:
    """Rolling restart through the cluster (a changed MariaDB configuration applies at a
    node's next start): the replicas one at a time, then a switchover, then the old primary."""
    done = dbrestart.rolling_restart(_fleet(inventory), out, nodes or None)
    out.print(f"restarted {', '.join(done) or 'nothing'}")


@app.command()
def chaos(faults: Annotated[str | None, typer.Option(
              "--faults", help="comma-separated faults, e.g. web1-nginx-killed,db2-power-off "
                               "(default: all of them; --list shows them)")] = None,
          rate: Annotated[float, typer.Option(
              help="requests/s of the steady load, at most 100")] = 30.0,
          fault_seconds: Annotated[float, typer.Option(
              help="how long each fault is held, 1..120 s")] = 10.0,
          report: Annotated[Path, typer.Option(help="directory of the report")]
          = Path("docs/chaos"),
          as_json: Annotated[bool, typer.Option("--json", help="print the report's JSON")]
          = False,
          list_faults: Annotated[bool, typer.Option("--list", help="list the faults and "
                                                                   "exit")] = False,
          inventory: InventoryOpt = None, secrets_dir: SecretsOpt = None,
          ) -> None:
    """Inject faults one at a time under a steady load of reads and writes; report what
    clients saw and check that every acknowledged write is on every DB node exactly once.

    Exits non-zero if a write was lost or applied twice, or a request failed where the
    design promises none (reads during a DB fault; every request during a web, app or
    monitoring fault).
    """
    # imported here: the chaos engine (its load generator, DNS, asyncio) takes 0.2 s to
    # import, which every other command would pay
    from hastack.chaos import catalog as chaos_catalog
    from hastack.chaos import report as chaos_report
    from hastack.chaos import run as chaos_run

    fleet = _fleet(inventory, secrets_dir)
    if list_faults:
        for fault in chaos_catalog.catalog(fleet.require_topology()).values():
            lab_only = " (lab only)" if fault.physical else ""
            out.print(f"{fault.name:28} {fault.expect:8} {fault.describe()}{lab_only}",
                      highlight=False)
        return
    names = [n for n in faults.split(",") if n.strip()] if faults is not None else None
    if names == []:
        raise HastackError("--faults is empty; name at least one fault (see --list)")
    plan = chaos_run.prepare(fleet, names, rate, fault_seconds)
    progress = (lambda line: None) if as_json else (lambda line: out.print(line,
                                                                          highlight=False))
    command = "hastack " + " ".join(sys.argv[1:])
    data = chaos_run.execute(plan, progress, command)
    written = chaos_report.write(data, report)
    if as_json:
        print(json.dumps(data))
    else:
        audit = data["audit"]
        for r in data["faults"]:
            out.print(f"{r['fault']:28} failed {r['failed']:4}  detected "
                      f"{r['detection_s']} s  p99 {r['p99_ms']} ms  healthy "
                      f"{r['healthy_after_heal_s']} s after heal", highlight=False)
        out.print(f"writes: {audit['acknowledged']} acknowledged, {audit['lost']} lost, "
                  f"{audit['duplicated']} applied twice; report: {written['markdown']}")
    if data["verdict"]:
        raise HastackError("chaos: " + "; ".join(data["verdict"])
                           + f" (report: {written['markdown']})")


@app.command()
def bench(seconds: Annotated[int, typer.Option(
              help=f"how long each measurement runs, 1..{benchmark.MAX_SECONDS} s")] = 8,
          concurrency: Annotated[int, typer.Option(
              help=f"connections the generator keeps open, 1..{benchmark.MAX_CONCURRENCY}")]
          = 16,
          as_json: Annotated[bool, typer.Option("--json", help="print the figures as JSON")]
          = False,
          inventory: InventoryOpt = None, secrets_dir: SecretsOpt = None) -> None:
    """Throughput and latency through a VIP beside the same requests made directly to one
    nginx and one gunicorn, in one run: a static asset, a page and a write, over HTTPS."""
    fleet = _fleet(inventory, secrets_dir)
    progress = (lambda line: None) if as_json else (lambda line: out.print(line,
                                                                          highlight=False))
    data = benchmark.run(fleet, seconds, concurrency, progress)
    if as_json:
        print(json.dumps(data))
        return
    gen = data["generator"]
    table = Table("kind", "route", "answered by", "req/s", "p50 ms", "p99 ms", "requests",
                  "errors", title="hastack bench")
    for m in data["measurements"]:
        table.add_row(m["kind"], m["route"], m["target"], f"{m['rps']:.0f}",
                      f"{m['p50_ms']:g}", f"{m['p99_ms']:g}", str(m["requests"]),
                      str(m["errors"]))
    out.print(table)
    for r in data["ratios"]:
        goal = "" if r["goal"] is None else (f"  (goal >= {r['goal']}: "
                                             f"{'met' if r['met'] else 'MISSED'})")
        out.print(f"{r['kind']}: via VIP / direct to {r['direct']} = {r['ratio']}{goal}",
                  highlight=False)
    machine_cores = ", ".join(f"{k} {v}" for k, v in data["machine_cores"].items())
    out.print(f"generator: {gen['tool']} ({gen['protocol']}, {gen['threads']} threads) on "
              f"{gen['where']}, {gen['cores']} cores, "
              f"{gen['concurrency']} keep-alive connections, {gen['seconds']} s each, "
              f"at most {max(m['generator_cores'] for m in data['measurements']):.2f} cores "
              f"used by it; cores of the machines answering directly: {machine_cores}",
              highlight=False, markup=False)


def main() -> None:
    # hastack writes machines' filesystems (overlays, network and SSH files, the image):
    # their modes must not depend on the operator's umask (a umask of 077 made every
    # machine's / unreadable to its own daemons). Secrets set their own modes (0600/0700).
    os.umask(0o022)
    try:
        app(standalone_mode=False)
    except HastackError as exc:
        err.print(f"[red]error:[/red] {exc}", highlight=False)
        sys.exit(1)
    except KeyboardInterrupt:
        err.print("[red]error:[/red] interrupted; run the same command again to resume "
                  "(or 'hastack down')", highlight=False)
        sys.exit(130)
    except PermissionError as exc:
        err.print(f"[red]error:[/red] {exc}; run as root", highlight=False)
        sys.exit(1)
    except typer.Exit as exc:
        sys.exit(exc.exit_code)
    except Exception as exc:  # click usage errors and friends
        import click
        if isinstance(exc, click.ClickException):
            exc.show()
            sys.exit(exc.exit_code)
        if isinstance(exc, click.exceptions.Abort):
            sys.exit(1)
        raise





if __name__ == "__main__":
    main()
