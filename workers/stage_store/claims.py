"""Exclusive claims on a stage: one trial computes it, the others wait; a dead holder's claim expires.

A claim is the file `<entry>/_CLAIM.json`, created atomically with `O_CREAT | O_EXCL` (POSIX
filesystems, NFS v3+ included), holding its owner (`<sweep>/<trial>`), a token unique to the claiming
process, the host and pid, and a heartbeat time that the holder rewrites every `HEARTBEAT_S`
(`Heartbeat`). A claim whose heartbeat is older than `STALE_S` is stale: its holder died or hangs.
Taking over a stale claim renames it away first (an atomic rename only one taker wins), then
creates a fresh one. A claim of the same owner (a retry of the trial that was killed while
computing) is taken over at once, without waiting for it to go stale.

Storage that is not a local filesystem (s3://, gs://) has no exclusive create: there the claim is
written and read back, which narrows the race to a few milliseconds but does not close it (two
trials may then compute the same stage; the store keeps the last, both are correct).
"""

from __future__ import annotations

import contextlib
import json
import os
import posixpath
import socket
import threading
import time
import uuid
from dataclasses import dataclass
from typing import Any

import pyarrow.fs as pafs

from workers.markers import read_marker, write_marker
from workers.storage import resolve_uri

__all__ = ["CLAIM_FILE", "HEARTBEAT_S", "STALE_S", "Claim", "ClaimHeld", "Heartbeat", "try_claim"]

CLAIM_FILE = "_CLAIM.json"
HEARTBEAT_S = float(os.environ.get("TRILEVEL_CLAIM_HEARTBEAT_S", "10"))
STALE_S = float(os.environ.get("TRILEVEL_CLAIM_STALE_S", "60"))


@dataclass(frozen=True)
class Claim:
    """A claim this process holds on the stage stored under `entry`."""

    entry: str  # the stage's directory in the store
    owner: str  # <sweep>/<trial>
    token: str

    def beat(self) -> None:
        """Rewrite the heartbeat (atomically), unless the claim was taken over meanwhile."""
        held = read_marker(self.entry, CLAIM_FILE)
        if held is None or held.get("token") != self.token:
            return
        write_marker(self.entry, _body(self.owner, self.token, held.get("since", time.time())), CLAIM_FILE)

    def release(self) -> None:
        """Remove the claim if this process still holds it."""
        held = read_marker(self.entry, CLAIM_FILE)
        if held is not None and held.get("token") == self.token:
            fs, root = resolve_uri(self.entry)
            with contextlib.suppress(FileNotFoundError, OSError):
                fs.delete_file(posixpath.join(root, CLAIM_FILE))


@dataclass(frozen=True)
class ClaimHeld:
    """Another live process holds the claim: wait for it (the holder's identity, for messages)."""

    owner: str
    host: str
    pid: int
    age_s: float  # seconds since its last heartbeat


def _body(owner: str, token: str, since: float) -> dict[str, Any]:
    return {
        "owner": owner,
        "token": token,
        "host": socket.gethostname(),
        "pid": os.getpid(),
        "since": since,
        "heartbeat": time.time(),
    }


def _create_exclusive(entry: str, body: dict[str, Any]) -> bool:
    fs, root = resolve_uri(entry)
    path = posixpath.join(root, CLAIM_FILE)
    fs.create_dir(root, recursive=True)
    data = json.dumps(body, indent=2).encode()
    if isinstance(fs, pafs.LocalFileSystem):
        # written whole under a name of our own, then linked into place: the link is the exclusive create, and
        # a reader never sees the claim empty (an O_EXCL create followed by a write did show it empty)
        staged = f"{path}.{body['token']}.tmp"
        with open(staged, "wb") as stream:
            stream.write(data)
        try:
            os.link(staged, path)
        except FileExistsError:
            return False
        finally:
            os.unlink(staged)
        return True
    if fs.get_file_info(path).type == pafs.FileType.File:  # no exclusive create: write, then read back
        return False
    with fs.open_output_stream(path) as stream:
        stream.write(data)
    held = read_marker(entry, CLAIM_FILE)
    return held is not None and held.get("token") == body["token"]


def _move_away(entry: str, held: dict[str, Any]) -> bool:
    """Rename a stale claim away (only one taker wins); False when someone else did first."""
    fs, root = resolve_uri(entry)
    path = posixpath.join(root, CLAIM_FILE)
    current = read_marker(entry, CLAIM_FILE)
    if current is None or current.get("token") != held.get("token"):
        return current is None  # gone already: try to create; replaced: someone took it over
    moved = posixpath.join(root, f"_CLAIM.stale-{uuid.uuid4().hex[:8]}.json")
    try:
        fs.move(path, moved)
    except (FileNotFoundError, OSError):
        return False
    with contextlib.suppress(FileNotFoundError, OSError):
        fs.delete_file(moved)
    return True


def try_claim(entry: str, owner: str, stale_s: float = STALE_S) -> Claim | ClaimHeld:
    """Claim the stage under `entry` for `owner`, or say who holds it.

    A stale claim (no heartbeat for `stale_s`), or one of the same owner (its earlier, dead process:
    Tune runs one process per trial), is taken over.
    """
    token = uuid.uuid4().hex
    for _ in range(5):  # a lost race against another taker: look again
        if _create_exclusive(entry, _body(owner, token, time.time())):
            return Claim(entry, owner, token)
        held = read_marker(entry, CLAIM_FILE)
        if held is None:
            continue  # released between our create and our read
        age = time.time() - float(held.get("heartbeat", 0))
        if held.get("owner") != owner and age < stale_s:
            return ClaimHeld(str(held.get("owner")), str(held.get("host")), int(held.get("pid", -1)), age)
        _move_away(entry, held)
    held = read_marker(entry, CLAIM_FILE) or {}
    return ClaimHeld(str(held.get("owner")), str(held.get("host")), int(held.get("pid", -1)), 0.0)


class Heartbeat:
    """A daemon thread that beats the heart of the claims this process holds, every `interval_s`."""

    def __init__(self, interval_s: float = HEARTBEAT_S) -> None:
        self.interval_s = interval_s
        self._claims: dict[str, Claim] = {}
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="stage-claims", daemon=True)
        self._thread.start()

    def hold(self, claim: Claim) -> None:
        with self._lock:
            self._claims[claim.entry] = claim

    def release(self, claim: Claim) -> None:
        with self._lock:
            self._claims.pop(claim.entry, None)
        claim.release()

    def release_all(self) -> None:
        with self._lock:
            claims, self._claims = list(self._claims.values()), {}
        for claim in claims:
            claim.release()

    def stop(self) -> None:
        self._stop.set()
        self.release_all()

    def _run(self) -> None:
        while not self._stop.wait(self.interval_s):
            with self._lock:
                claims = list(self._claims.values())
            for claim in claims:
                with contextlib.suppress(OSError, ValueError):
                    claim.beat()
