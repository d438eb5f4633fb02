"""Reading a W&B run's transaction log, ``<wandb dir>/*run-<time>-<id>/run-<id>.wandb``.

Every record that a W&B run logs goes into this file, offline or online; ``wandb sync``
uploads it. wandb 0.31 has no Python reader of it any more (``wandb.sdk.internal.datastore`` is
gone; ``wandb beta leet`` is a terminal UI), so this is one: the file is a LevelDB log (a
7-byte header ``:W&B``, magic 0xBEE1, version 0, then 32 KiB blocks of records, each a CRC-32
(IEEE, seeded with the record's type byte), a length, a type FULL/FIRST/MIDDLE/LAST and the
data) whose records are wandb's own ``Record`` protobufs.

wandb's service writes the file a block at a time, so a process killed with SIGKILL leaves up
to the last 32 KiB of records unwritten; a torn or corrupt tail ends the read there.
"""

from __future__ import annotations

import json
import struct
import zlib
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

HEADER = struct.pack("<4sHB", b":W&B", 0xBEE1, 0)
BLOCK = 32768
RECORD_HEADER = 7  # crc32 (uint32), length (uint16), type (uint8)
FULL, FIRST, MIDDLE, LAST = 1, 2, 3, 4
_TYPE_CRC = {t: zlib.crc32(bytes([t])) for t in (FULL, FIRST, MIDDLE, LAST)}
# History keys that wandb adds to every row.
BOOKKEEPING_PREFIX = "_"


def chunks(data: bytes) -> Iterator[bytes]:
    """The records' data in a LevelDB log, reassembled; stops at a torn or corrupt tail."""
    if not data.startswith(HEADER):
        raise ValueError("not a W&B transaction log (bad header)")
    i, parts = len(HEADER), b""
    while True:
        left = BLOCK - i % BLOCK
        if left < RECORD_HEADER:  # the block's trailer: zeros
            i += left
        if i + RECORD_HEADER > len(data):
            return
        crc, length, kind = struct.unpack_from("<IHB", data, i)
        body = data[i + RECORD_HEADER : i + RECORD_HEADER + length]
        if kind not in _TYPE_CRC or len(body) < length or zlib.crc32(body, _TYPE_CRC[kind]) != crc:
            return
        i += RECORD_HEADER + length
        if kind == FULL:
            yield body
        elif kind == FIRST:
            parts = body
        elif kind == MIDDLE:
            parts += body
        else:
            yield parts + body


def records(path: Path) -> Iterator[Any]:
    """The ``wandb_internal_pb2.Record`` messages of one .wandb file, in order."""
    from wandb.proto import wandb_internal_pb2

    for raw in chunks(Path(path).read_bytes()):
        record = wandb_internal_pb2.Record()
        record.ParseFromString(raw)
        yield record


def run_files(wandb_dir: Path, run_id: str) -> list[Path]:
    """Every .wandb file of the run ``run_id`` under ``wandb_dir`` (the ``wandb`` directory),
    oldest first: one per process that logged into the run (``offline-run-`` or ``run-``
    directories, named by their start time)."""
    found = Path(wandb_dir).glob(f"*run-*-{run_id}/run-{run_id}.wandb")
    return sorted(found, key=lambda p: p.parent.name.split("run-", 1)[1])


def _items(items: Any) -> dict[str, Any]:
    """Key-value items as a dict: an item's ``nested_key`` (a logged dict, e.g. an image's
    fields) makes nested dicts."""
    out: dict[str, Any] = {}
    for item in items:
        path = [item.key] if item.key else list(item.nested_key)
        node = out
        for part in path[:-1]:
            node = node.setdefault(part, {})
        node[path[-1]] = json.loads(item.value_json)
    return out


@dataclass
class RunLog:
    """What a run's .wandb files hold: history rows by step (wandb's bookkeeping keys left
    out), the latest config and summary values, and the logged artifacts."""

    history: list[tuple[int, dict[str, Any]]] = field(default_factory=list)
    config: dict[str, Any] = field(default_factory=dict)
    summary: dict[str, Any] = field(default_factory=dict)
    artifacts: list[Any] = field(default_factory=list)
    runs: list[Any] = field(default_factory=list)
    exits: list[int] = field(default_factory=list)

    def steps(self) -> dict[int, set[str]]:
        """The keys held at each step."""
        out: dict[int, set[str]] = {}
        for step, row in self.history:
            out.setdefault(step, set()).update(row)
        return out


def read_run(files: list[Path]) -> RunLog:
    """The records of ``files`` (one run's, oldest first), gathered."""
    log = RunLog()
    for path in files:
        for record in records(path):
            kind = record.WhichOneof("record_type")
            if kind == "history":
                row = _items(record.history.item)
                step = int(row.get("_step", record.history.step.num))
                log.history.append((step, {k: v for k, v in row.items()
                                           if not k.startswith(BOOKKEEPING_PREFIX)}))
            elif kind == "run":
                log.runs.append(record.run)
                log.config.update(_items(record.run.config.update))
            elif kind == "config":
                log.config.update(_items(record.config.update))
            elif kind == "summary":
                log.summary.update(_items(record.summary.update))
            elif kind == "artifact":
                log.artifacts.append(record.artifact)
            elif kind == "exit":
                log.exits.append(record.exit.exit_code)
    return log
