"""Training checkpoints written whole or not at all: Lightning's own save writes the final file in place, so a disk
that fills (or any failure) part-way left a truncated ``best.ckpt``/``last.ckpt`` under the final name."""

from __future__ import annotations

from pathlib import Path

from lightning.pytorch.plugins.io import TorchCheckpointIO

from hessdistill.data.store_files import replacing


class ReplacingCheckpointIO(TorchCheckpointIO):
    """Lightning's checkpoint writer, writing each checkpoint to a side file that is synced and renamed over the
    final name only once complete: after a failed save the previous checkpoint under that name is intact."""

    def save_checkpoint(self, checkpoint: dict, path, storage_options=None) -> None:
        if "://" in str(path):  # remote storage (s3://, …) has no rename: Lightning's own transaction
            return super().save_checkpoint(checkpoint, path, storage_options)
        Path(path).parent.mkdir(parents=True, exist_ok=True)
        with replacing(Path(path)) as partial:
            super().save_checkpoint(checkpoint, partial, storage_options)
