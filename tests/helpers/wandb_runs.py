"""Read an offline W&B run (``<dir>/wandb/offline-run-*/run-*.wandb``) without W&B's servers.

The ``.wandb`` file is a LevelDB-style log (a 7-byte header ``:W&B`` + magic + version, then 32 KiB blocks of
records with a 7-byte header: CRC32, length, type FULL/FIRST/MIDDLE/LAST) of ``wandb_internal_pb2.Record`` protos.
"""

import json
import struct
from pathlib import Path

from wandb.proto import wandb_internal_pb2

BLOCK = 32 * 1024
FULL, FIRST, MIDDLE, LAST = 1, 2, 3, 4


def records(path: Path) -> list:
    """Every record of a ``.wandb`` file, in order."""
    data = path.read_bytes()
    assert data[:4] == b":W&B", f"{path} is no W&B transaction log"
    position, pending, out = 7, b"", []
    while position + 7 <= len(data):
        left = BLOCK - position % BLOCK
        if left < 7:  # block trailer
            position += left
            continue
        _, length, kind = struct.unpack("<IHB", data[position : position + 7])
        chunk = data[position + 7 : position + 7 + length]
        position += 7 + length
        if kind == 0 and length == 0:
            break
        pending = chunk if kind in (FULL, FIRST) else pending + chunk
        if kind in (FULL, LAST):
            record = wandb_internal_pb2.Record()
            record.ParseFromString(pending)
            out.append(record)
            pending = b""
    return out


def offline_run(wandb_dir: Path) -> dict:
    """The config, logged history rows and file names of the one offline run under ``<wandb_dir>/wandb/``.

    Returns:
        ``{"config": {key: value}, "history": [{key: value}], "files": [relative paths under files/]}`` with
        values JSON-decoded.
    """
    (run_dir,) = sorted((Path(wandb_dir) / "wandb").glob("offline-run-*"))
    (log,) = run_dir.glob("run-*.wandb")
    config, history = {}, []
    for record in records(log):
        kind = record.WhichOneof("record_type")
        if kind == "config":
            for item in record.config.update:
                key = ".".join(item.nested_key) if item.nested_key else item.key
                config[key] = json.loads(item.value_json)
        elif kind == "history":
            row = {}
            for item in record.history.item:
                key = ".".join(item.nested_key) if item.nested_key else item.key
                row[key] = json.loads(item.value_json)
            history.append(row)
    files = sorted(str(p.relative_to(run_dir / "files")) for p in (run_dir / "files").rglob("*") if p.is_file())
    return {"config": config, "history": history, "files": files}
