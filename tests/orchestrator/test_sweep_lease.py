"""The sweep's id and lease (issue 19, item 1) with real processes: a live holder refuses a second driver,
naming it; a SIGKILLed holder's lease is taken over without cleanup; a stale heartbeat from another host expires.
On object-store storage the lease is a named actor on
the Ray cluster: two real drivers on the session's real cluster race for it, one wins, a `trilevel sweep` driver is
refused naming the holder, and the holder's lease ends with it when it is SIGKILLed.
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
from tests.helpers import wait_for

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


ON_CLUSTER = """
import sys, time
import ray
from orchestrator.cluster_lease import hold_on_cluster
from orchestrator.sweep_lease import SweepBusy
ray.init(address=sys.argv[1], log_to_driver=False)
while True:
    try:
        with hold_on_cluster(sys.argv[2], "sw"):
            print("held", flush=True)
            sys.stdin.read()  # until the test closes stdin or kills this driver
        break
    except SweepBusy as busy:
        print("busy", " ".join(str(busy).split()), flush=True)
        time.sleep(0.5)
"""


@pytest.mark.xdist_group("cluster")  # the session's real cluster (tests/conftest.py)
def test_on_object_storage_drivers_of_one_ray_cluster_hold_one_lease_on_it(cluster, tmp_path):
    """Two real drivers racing for sweep `sw` on object-store storage (pyarrow's in-memory ``mock://``: no file
    lease is possible there) on one real cluster: one holds, the other is refused naming it; so is a `trilevel
    sweep` of it (exit 1, no traceback); once the holder is SIGKILLed, the other takes the lease over, no cleanup."""
    storage = f"mock:///{tmp_path.name}/runs"
    logs = [tmp_path / "a.log", tmp_path / "b.log"]  # what each driver says: held, or busy and why
    drivers = []
    for log in logs:
        with open(log, "w") as out, open(log.with_suffix(".err"), "w") as err:
            command = [sys.executable, "-c", ON_CLUSTER, cluster["gcs"], storage]
            drivers.append(subprocess.Popen(command, stdin=subprocess.PIPE, stdout=out, stderr=err))
    try:

        def said(index: int) -> list[str]:
            return logs[index].read_text().splitlines()

        def settled() -> bool:
            return all(driver.poll() is None for driver in drivers) and all(said(i) for i in range(2))

        wait_for(lambda: settled() or any(driver.poll() is not None for driver in drivers), 120, "both drivers")
        assert settled(), [log.with_suffix(".err").read_text()[-3000:] for log in logs]
        first = [said(i)[0] for i in range(2)]
        assert sorted(line.split()[0] for line in first) == ["busy", "held"], first  # exactly one won the race
        won = first.index("held")
        holder, waiting = drivers[won], drivers[1 - won]
        busy = first[1 - won]
        assert f"being run by another driver: pid {holder.pid} on host {socket.gethostname()}, since" in busy, busy
        assert "trilevel resume sw" in busy and "ends with that driver" in busy and "--name" in busy, busy

        tracking = f"sqlite:///{tmp_path / 'mlflow.db'}"
        sweep = [sys.executable, "-m", "orchestrator", "sweep", "table8", "--name", "sw", "--storage", storage]
        sweep += ["--tracking-uri", tracking, "--address", cluster["gcs"], "-v"]
        refused = subprocess.run(sweep, capture_output=True, text=True, timeout=300, cwd=tmp_path)
        message = " ".join((refused.stdout + refused.stderr).split())
        assert refused.returncode == 1, message[-3000:]
        assert f"sweep 'sw' under {storage} is being run by another driver: pid {holder.pid} on host" in message
        assert "Traceback" not in message, message[-3000:]

        holder.kill()  # SIGKILL: no release; Ray ends the lease with its owner
        holder.wait()
        wait_for(lambda: "held" in said(1 - won), 60, "the other driver to take the lease over")
        assert waiting.poll() is None, logs[1 - won].read_text()[-3000:]
    finally:
        for driver in drivers:
            driver.kill()
            driver.wait()
