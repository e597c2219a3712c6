"""Backups of the database, operated on the backup machine (role `backup`).

The machine's own program (ansible/roles/backup/files/hastack-db-backup) takes them; the
systemd unit that runs it on a schedule also runs it now, so a backup taken by hand is the
same as a scheduled one and two never overlap (systemd starts one run at a time).
"""

from __future__ import annotations

import json
from typing import Any

from hastack.errors import HastackError
from hastack.fleet import Fleet

SERVICE = "hastack-db-backup.service"
PROGRAM = "hastack-db-backup"
RUN_TIMEOUT = 3600.0


def backup_machine(fleet: Fleet) -> str:
    machines = fleet.require_topology().with_role("backup")
    if not machines:
        raise HastackError("no machine has role 'backup'; give one (not a database node) the "
                           "role, or keep a monitoring machine (the first one has it by default)")
    return machines[0].name


def _json(fleet: Fleet, machine: str, *args: str) -> Any:
    text = fleet.run_checked(machine, [PROGRAM, *args], f"{PROGRAM} {' '.join(args)}")
    try:
        return json.loads(text)
    except ValueError:
        raise HastackError(f"{machine}: {PROGRAM} {' '.join(args)} answered something that is "
                           "not JSON; redeploy the backup role") from None


def take(fleet: Fleet) -> dict[str, Any]:
    """Take a full backup now and return what it is (backup.json); one clear error if not."""
    machine = backup_machine(fleet)
    before = _json(fleet, machine, "last").get("ended")
    started = fleet.run_on(machine, ["systemctl", "start", SERVICE], timeout=RUN_TIMEOUT)
    last = _json(fleet, machine, "last")
    if last.get("ok") is None or last.get("ended") == before:
        detail = (started.stderr.strip().splitlines() or ["no output"])[-1]
        raise HastackError(f"{machine}: the backup service did not run ({detail}); "
                           "redeploy the backup role")
    if not last["ok"]:
        raise HastackError(f"{machine}: backup failed: {last['error']}")
    return last["backup"]


def listing(fleet: Fleet) -> list[dict[str, Any]]:
    """The complete backups kept, oldest first."""
    return _json(fleet, backup_machine(fleet), "list")


def restore(fleet: Fleet, to: str) -> dict[str, Any]:
    """Restore the newest backup before `to` (a GTID or a UTC time) plus the copied binary
    logs up to it into a data directory on the backup machine; a throwaway server there
    reports each table's CHECKSUM TABLE and row count. One clear error if it cannot."""
    machine = backup_machine(fleet)
    result = fleet.run_on(machine, [PROGRAM, "restore", "--to", to], timeout=RUN_TIMEOUT)
    if result.returncode != 0:
        detail = (result.stderr.strip().splitlines() or ["no output"])[-1]
        raise HastackError(f"{machine}: {detail}")
    try:
        return json.loads(result.stdout)
    except ValueError:
        raise HastackError(f"{machine}: {PROGRAM} restore answered something that is not "
                           "JSON; redeploy the backup role") from None


def drill(fleet: Fleet) -> dict[str, Any]:
    """Run the restore drill now: the newest backup and the copied binlogs restored to a
    replica's position, every table's CHECKSUM TABLE compared with the replica's. Returns
    the result when the tables are equal; one clear error otherwise."""
    machine = backup_machine(fleet)
    result = fleet.run_on(machine, [PROGRAM, "drill"], timeout=RUN_TIMEOUT)
    try:
        done = json.loads(result.stdout)
    except ValueError:
        detail = (result.stderr.strip().splitlines() or ["no output"])[-1]
        raise HastackError(f"{machine}: the restore drill did not run ({detail}); redeploy "
                           "the backup role") from None
    if not done["ok"]:
        raise HastackError(f"{machine}: restore drill failed: " + (
            done.get("error") or f"restored {', '.join(done['differ'])} differ from "
                                 f"{done['replica']} at GTID {done['gtid']}"))
    return done
