"""``logger=tensorboard``: TensorBoard event files in ``<run dir>/tensorboard/``.

Every job writes into its own run dir, so ``tensorboard --logdir <sweep dir>`` shows every
job of a sweep side by side (as ``<job dir>/tensorboard``), and ``--logdir outputs`` every run.
What is written: the flattened config as the HParams plugin's hyperparameters and as a text
table at step 0; each epoch's scalars with step = epoch; at the end the run's status (text
``status`` and the HParams session status) and the PNG figures as images.

A resumed run opens a new event file in the same directory. Before writing, it reads back
what the earlier files hold (TensorBoard's own EventAccumulator) and writes only the
(tag, step) pairs that are missing, so every reader sees each epoch once.
"""

from __future__ import annotations

import struct
from pathlib import Path
from typing import Any

from agop_sweep.config import flatten
from agop_sweep.store.record import RunRecord
from agop_sweep.trackers.base import RunContext, Tracker

SUBDIR = "tensorboard"


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

    def open(self, record: RunRecord) -> bool:
        from torch.utils.tensorboard import SummaryWriter

        self.existing = logged_events(self.logdir) if self.logdir.is_dir() else set()
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
        self.writer.add_text("run", f"{self.ctx.name} in {self.ctx.run_dir}", 0)

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
