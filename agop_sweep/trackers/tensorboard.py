"""``logger=tensorboard``: TensorBoard event files.

TensorBoard names a run after the directory of its event files. A job of a sweep writes them
into ``<sweep dir>/tensorboard/<run name>/``, its name being the keys that vary within the
sweep (``optimizer=adam``, :mod:`.naming`), so ``tensorboard --logdir <sweep dir>`` shows
``tensorboard/optimizer=adam`` and its siblings; a single run writes into
``<run dir>/tensorboard/``. ``--logdir outputs`` shows every run. The directory holds a
``run_key`` file naming its run; a named directory that another run holds (or that is not a
valid name) leaves the job in its own ``<run dir>/tensorboard/``, as does an earlier version's
event file there. state.pt keeps the directory.
What is written: the flattened config as the HParams plugin's hyperparameters and as a text
table at step 0; each epoch's scalars with step = epoch; at the end the run's status (text
``status`` and the HParams session status) and the PNG figures as images.

A resumed run opens a new event file in the same directory. Before writing, it reads back
what the earlier files hold (TensorBoard's own EventAccumulator) and writes only the
(tag, step) pairs that are missing, so every reader sees each epoch once.
"""

from __future__ import annotations

import os
import struct
from pathlib import Path
from typing import Any

from agop_sweep.config import flatten
from agop_sweep.store.record import RunRecord
from agop_sweep.trackers.base import RunContext, Tracker, run_key

SUBDIR = "tensorboard"
RUN_KEY_FILE = "run_key"  # in the log dir: the run it belongs to (base.run_key)
NAME_MAX_BYTES = 200  # a directory name, with room to spare below the usual 255


def named_logdir(ctx: RunContext) -> Path | None:
    """``<sweep dir>/tensorboard/<run name>`` for a job named by its sweep's keys, else None."""
    name = ctx.name.replace("/", "_")
    if not ctx.swept or name in ("", ".", "..") or len(name.encode()) > NAME_MAX_BYTES:
        return None
    return ctx.group / SUBDIR / name


def choose_logdir(ctx: RunContext, key: str) -> Path:
    """The named log dir when it is free or already this run's, else ``<run dir>/tensorboard``
    (also when that already holds event files: a run started before runs had named dirs)."""
    own = ctx.run_dir / SUBDIR
    named = named_logdir(ctx)
    if named is not None and not any(own.glob("events.out.tfevents.*")):
        marker = named / RUN_KEY_FILE
        if not named.exists() or (marker.is_file() and marker.read_text() == key):
            return named
    return own


def logged_events(logdir: Path) -> set[tuple[str, int]]:
    """Every (tag, step) that the event files in ``logdir`` hold: scalars, tensors (text) and
    images, as TensorBoard reads them."""
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    acc = EventAccumulator(str(logdir), size_guidance={"scalars": 0, "tensors": 0, "images": 0})
    acc.Reload()
    tags = acc.Tags()
    out: set[tuple[str, int]] = set()
    for kind, read in (("scalars", acc.Scalars), ("tensors", acc.Tensors), ("images", acc.Images)):
        for tag in tags.get(kind, []):
            out.update((tag, event.step) for event in read(tag))
    return out


def _hparam(value: Any) -> bool | int | float | str:
    return value if isinstance(value, (bool, int, float, str)) else str(value)


def _session_end(status: str) -> Any:
    """The HParams plugin's session-end summary: SUCCESS for a completed or diverged run (it
    ended and its numbers stand), FAILURE for a failed one, UNKNOWN for one stopped early."""
    from tensorboard.compat.proto.summary_pb2 import Summary, SummaryMetadata
    from tensorboard.plugins.hparams import metadata
    from tensorboard.plugins.hparams.api_pb2 import Status
    from tensorboard.plugins.hparams.plugin_data_pb2 import HParamsPluginData, SessionEndInfo

    name = {"completed": "STATUS_SUCCESS", "diverged": "STATUS_SUCCESS", "failed": "STATUS_FAILURE"}
    info = SessionEndInfo(status=Status.Value(name.get(status, "STATUS_UNKNOWN")))
    content = HParamsPluginData(session_end_info=info, version=metadata.PLUGIN_DATA_VERSION)
    meta = SummaryMetadata(plugin_data=SummaryMetadata.PluginData(
        plugin_name=metadata.PLUGIN_NAME, content=content.SerializeToString()))
    return Summary(value=[Summary.Value(tag=metadata.SESSION_END_INFO_TAG, metadata=meta)])


def _png_size(data: bytes) -> tuple[int, int, int]:
    """Width, height and channels of a PNG from its IHDR chunk."""
    width, height = struct.unpack(">II", data[16:24])
    channels = {0: 1, 2: 3, 3: 3, 4: 2, 6: 4}.get(data[25], 4)
    return width, height, channels


class TensorBoardTracker(Tracker):
    name = "tensorboard"
    label = "TensorBoard"

    def __init__(self, ctx: RunContext):
        super().__init__(ctx)
        self.logdir = ctx.run_dir / SUBDIR
        self.writer: Any = None
        self.existing: set[tuple[str, int]] = set()

    def tracker_state(self) -> dict[str, Any]:
        # Relative to the run dir: a sweep copied elsewhere resumes into its own copy.
        return {"logdir": os.path.relpath(self.logdir, self.ctx.run_dir)} if self.opened else {}

    def open(self, record: RunRecord) -> bool:
        from torch.utils.tensorboard import SummaryWriter

        key = run_key(self.ctx.run_dir, record)
        saved = self.saved.get("logdir")
        if saved:
            self.logdir = Path(os.path.normpath(self.ctx.run_dir / saved))
        else:
            self.logdir = choose_logdir(self.ctx, key)
        self.existing = logged_events(self.logdir) if self.logdir.is_dir() else set()
        self.logdir.mkdir(parents=True, exist_ok=True)
        marker = self.logdir / RUN_KEY_FILE
        if not marker.exists():
            marker.write_text(key)
        # One flush per epoch (flush()), not on a timer.
        self.writer = SummaryWriter(log_dir=str(self.logdir), flush_secs=3600)
        if not self.existing:
            self._write_config(record)
        return bool(self.existing)

    def _write_config(self, record: RunRecord) -> None:
        from torch.utils.tensorboard.summary import hparams

        params = flatten(record.config)
        _, session_start, _ = hparams({key: _hparam(value) for key, value in params.items()}, {})
        self._summary(session_start, 0)
        rows = "\n".join(f"| {key} | {value} |" for key, value in params.items())
        self.writer.add_text("config", f"| key | value |\n| --- | --- |\n{rows}", 0)
        overrides = " ".join(self.ctx.overrides) or "none"
        self.writer.add_text("run", f"{self.ctx.name} in {self.ctx.run_dir}; overrides: {overrides}", 0)

    def _summary(self, summary: Any, step: int) -> None:
        self.writer._get_file_writer().add_summary(summary, step)

    def logged(self, epoch: int, keys: list[str]) -> set[str]:
        return {key for key in keys if (key, epoch) in self.existing}

    def log_metrics(self, epoch: int, metrics: dict[str, float]) -> None:
        for key, value in metrics.items():
            self.writer.add_scalar(key, value, epoch)

    def flush(self) -> None:
        if self.writer is not None:
            self.writer.flush()

    def finish(self, record: RunRecord, run_dir: Path) -> None:
        if self.writer is None:
            return
        step = max(self.last_epoch, 0)
        self.writer.add_text("status", record.status, step)
        for png in sorted((run_dir / "plots").glob("*.png")):
            self._image(f"figures/{png.stem}", png.read_bytes(), step)
        self._summary(_session_end(record.status), step)
        self.writer.flush()

    def _image(self, tag: str, png: bytes, step: int) -> None:
        from tensorboard.compat.proto.summary_pb2 import Summary

        width, height, channels = _png_size(png)
        image = Summary.Image(height=height, width=width, colorspace=channels, encoded_image_string=png)
        self._summary(Summary(value=[Summary.Value(tag=tag, image=image)]), step)

    def close(self) -> None:
        if self.writer is not None:
            writer, self.writer = self.writer, None
            writer.close()
