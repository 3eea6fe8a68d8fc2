"""The sweep's id and lease (issue 19, item 1) with real processes: a live holder refuses a second driver,
naming it; a SIGKILLed holder's lease is taken over without cleanup; a stale heartbeat from another host expires.
"""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest
from click.testing import CliRunner

from orchestrator.sweep_lease import LEASE_FILE, LEASE_TTL_S, SWEEP_FILE, SweepBusy, SweepLease, hold_sweep, sweep_id

HOLD = """
import sys, time
from orchestrator.sweep_lease import hold_sweep
with hold_sweep(sys.argv[1], "sw") as identity:
    print("held", identity, flush=True)
    time.sleep(600)
"""


@pytest.fixture
def holder(tmp_path):
    """A real process that holds the lease of sweep `sw` under tmp_path/runs until killed."""
    storage = tmp_path / "runs"
    process = subprocess.Popen(
        [sys.executable, "-c", HOLD, str(storage)], stdout=subprocess.PIPE, text=True, env=os.environ.copy()
    )
    line = process.stdout.readline()
    assert line.startswith("held"), line
    yield process, storage, line.split()[1]
    process.kill()
    process.wait()


def test_a_second_driver_is_refused_naming_the_first_and_takes_over_once_it_is_killed(holder, tmp_path):
    from orchestrator.cli.run import sweep

    process, storage, identity = holder
    tracking = f"sqlite:///{tmp_path / 'mlflow.db'}"
    args = ["table8", "--storage", str(storage), "--name", "sw", "--tracking-uri", tracking]
    refused = CliRunner().invoke(sweep, args)  # the lease is taken before any Ray starts
    assert refused.exit_code == 1, refused.output
    message = " ".join(refused.output.split())
    assert f"pid {process.pid} on host {socket.gethostname()}, since" in message
    assert "trilevel resume sw" in message and "--name" in message
    assert sweep_id(str(storage), "sw") == identity  # the id is the sweep's, kept on storage

    process.send_signal(signal.SIGKILL)
    process.wait()
    assert (storage / "sw" / LEASE_FILE).is_file()  # left behind by the killed driver
    with hold_sweep(str(storage), "sw") as again:  # expired at once: same host, process gone
        assert again == identity
        lease = json.loads((storage / "sw" / LEASE_FILE).read_text())
        assert lease["pid"] == os.getpid() and lease["host"] == socket.gethostname()
    assert not (storage / "sw" / LEASE_FILE).exists()  # released at the end


def test_racing_drivers_one_wins(tmp_path):
    leases = [SweepLease(str(tmp_path), "sw") for _ in range(8)]
    outcomes: list[str] = []
    start = threading.Barrier(len(leases))

    def take(lease: SweepLease) -> None:
        start.wait()
        try:
            lease.acquire()
            outcomes.append("won")
        except SweepBusy:
            outcomes.append("refused")

    threads = [threading.Thread(target=take, args=(lease,)) for lease in leases]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert sorted(outcomes) == ["refused"] * 7 + ["won"]
    for lease in leases:
        lease.release()
    assert not (tmp_path / "sw" / LEASE_FILE).exists()


def _foreign_lease(path: Path, age_s: float) -> None:
    now = time.time()
    path.parent.mkdir(parents=True, exist_ok=True)
    record = {"host": "elsewhere", "pid": 1, "started": now - 3600, "renewed": now - age_s, "token": "t"}
    path.write_text(json.dumps(record))


def test_another_hosts_lease_holds_while_it_beats_and_expires_when_it_stops(tmp_path):
    path = tmp_path / "sw" / LEASE_FILE
    _foreign_lease(path, age_s=1)
    with pytest.raises(SweepBusy, match="pid 1 on host elsewhere"):
        SweepLease(str(tmp_path), "sw").acquire()
    _foreign_lease(path, age_s=LEASE_TTL_S + 1)
    lease = SweepLease(str(tmp_path), "sw")
    lease.acquire()
    assert json.loads(path.read_text())["token"] == lease.token
    lease.renew()
    assert not lease.lost
    lease.release()


def test_the_sweep_id_is_kept_and_a_damaged_file_is_named(tmp_path):
    first = sweep_id(str(tmp_path), "sw")
    assert sweep_id(str(tmp_path), "sw") == first
    assert json.loads((tmp_path / "sw" / SWEEP_FILE).read_text())["id"] == first
    assert sweep_id(str(tmp_path), "other") != first
    (tmp_path / "sw" / SWEEP_FILE).write_text("{}")
    with pytest.raises(ValueError, match=r"sweep.json: field 'id'"):
        sweep_id(str(tmp_path), "sw")
