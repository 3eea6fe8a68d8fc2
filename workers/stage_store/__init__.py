"""Content-addressed stages: a finished stage stored once by the hash of what determines its output.

A stage run's *key* (`keys`) hashes everything its output depends on: the settings it really reads,
the keys of the stages whose outputs it reads, the fingerprints of the data sets it reads, the seed
and the code version. A finished stage is published under `<storage>/_stages/<stage>/<key>/`
(`store`), as a reference to the checkpoints its computing run left, with their checksums; any trial
of any sweep on that storage reuses it instead of computing it again. Two trials needing the same
stage at once: one holds an exclusive claim (`claims`) and computes, the others wait; a claim whose
holder stops beating its heart expires and the next trial takes the stage over.

Workers-level on purpose (no Ray, no MLflow): the stage loops publish what they finish, and a
notebook can ask the store what is there.
"""

from workers.stage_store.claims import Claim, ClaimHeld, Heartbeat, try_claim
from workers.stage_store.keys import (
    StageKey,
    code_version,
    data_fingerprint,
    file_fingerprint,
    stage_key,
    stage_key_inputs,
)
from workers.stage_store.store import STORE_DIR, StoredStage, StoreError, entry_dir, lookup, publish

__all__ = [
    "STORE_DIR",
    "Claim",
    "ClaimHeld",
    "Heartbeat",
    "StageKey",
    "StoreError",
    "StoredStage",
    "code_version",
    "data_fingerprint",
    "entry_dir",
    "file_fingerprint",
    "lookup",
    "publish",
    "stage_key",
    "stage_key_inputs",
    "try_claim",
]
