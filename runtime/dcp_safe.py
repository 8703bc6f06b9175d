"""DCP checkpoint metadata without unpickling: a JSON copy written at save, read at load.

Why: DCP's ``FileSystemReader.read_metadata`` is a plain ``pickle.load`` of ``.metadata`` and its
``DefaultLoadPlanner.load_bytes`` a ``torch.load(weights_only=False)``, so loading a crafted
checkpoint would run code (issue 9: "nothing trusted blindly"). The metadata is plain data (tensor
names, dtypes, global shapes, chunk offsets and sizes, byte ranges in the shard files), so the
runtime keeps it as JSON in the checkpoint's own metadata file and hands DCP a reader that builds
the ``Metadata`` object from that JSON and never opens ``.metadata``. Shard files hold tensors only,
which DCP already reads with ``torch.load(weights_only=True)``; non-tensor items are refused.
"""

from __future__ import annotations

from typing import Any

import torch
from torch.distributed.checkpoint import FileSystemReader
from torch.distributed.checkpoint.default_planner import DefaultLoadPlanner
from torch.distributed.checkpoint.filesystem import _StorageInfo
from torch.distributed.checkpoint.metadata import (ChunkStorageMetadata, Metadata, MetadataIndex, StorageMeta,
                                                   TensorProperties, TensorStorageMetadata)

from planner.errors import SpecError


def _dtype(name: Any) -> torch.dtype:
    if not isinstance(name, str) or not name.startswith("torch."):
        raise SpecError(f"checkpoint metadata: bad dtype {name!r}")
    dt = getattr(torch, name[len("torch."):], None)
    if not isinstance(dt, torch.dtype):
        raise SpecError(f"checkpoint metadata: unknown dtype {name!r}")
    return dt


def _ints(v: Any, what: str) -> list[int]:
    if not isinstance(v, list) or not all(isinstance(x, int) and not isinstance(x, bool) and x >= 0 for x in v):
        raise SpecError(f"checkpoint metadata: {what} must be a list of non-negative integers")
    return v


def metadata_to_json(md: Metadata) -> dict[str, Any]:
    """The plain-data content of DCP's Metadata (tensor items only)."""
    tensors = {}
    for fqn, m in md.state_dict_metadata.items():
        if not isinstance(m, TensorStorageMetadata):
            raise SpecError(f"checkpoint item {fqn!r} is not a tensor; the runtime saves tensors only")
        p = m.properties
        if p.layout != torch.strided:
            raise SpecError(f"checkpoint item {fqn!r} has layout {p.layout}; only strided tensors are saved")
        tensors[fqn] = {"dtype": str(p.dtype), "requires_grad": bool(p.requires_grad), "size": list(m.size),
                        "chunks": [[list(c.offsets), list(c.sizes)] for c in m.chunks]}
    storage = []
    for idx, info in md.storage_data.items():
        storage.append({"fqn": idx.fqn, "offset": None if idx.offset is None else list(idx.offset),
                        "index": idx.index, "path": info.relative_path, "byte_offset": info.offset,
                        "length": info.length, "transforms": list(info.transform_descriptors or [])})
    return {"tensors": tensors, "storage": storage, "version": getattr(md, "version", None)}


def metadata_from_json(data: Any) -> Metadata:
    if not isinstance(data, dict) or not isinstance(data.get("tensors"), dict) or not isinstance(data.get("storage"), list):
        raise SpecError("checkpoint metadata: expected {'tensors': {...}, 'storage': [...]}")
    sd = {}
    for fqn, t in data["tensors"].items():
        if not isinstance(t, dict) or not isinstance(t.get("chunks"), list):
            raise SpecError(f"checkpoint metadata: tensor {fqn!r} is malformed")
        chunks = [ChunkStorageMetadata(offsets=torch.Size(_ints(c[0], "offsets")), sizes=torch.Size(_ints(c[1], "sizes")))
                  for c in t["chunks"] if isinstance(c, list) and len(c) == 2]
        props = TensorProperties(dtype=_dtype(t.get("dtype")), requires_grad=bool(t.get("requires_grad", False)))
        sd[fqn] = TensorStorageMetadata(properties=props, size=torch.Size(_ints(t.get("size"), "size")), chunks=chunks)
    storage = {}
    for s in data["storage"]:
        if not isinstance(s, dict) or not isinstance(s.get("path"), str) or "/" in s["path"] or s["path"].startswith("."):
            raise SpecError("checkpoint metadata: a storage entry is malformed (or names a path outside the checkpoint)")
        offset = None if s.get("offset") is None else torch.Size(_ints(s["offset"], "offset"))
        transforms = s.get("transforms") or None
        if transforms is not None and not all(isinstance(x, str) for x in transforms):
            raise SpecError("checkpoint metadata: transforms must be strings")
        idx = MetadataIndex(fqn=s.get("fqn"), offset=offset, index=s.get("index"))
        storage[idx] = _StorageInfo(relative_path=s["path"], offset=int(s.get("byte_offset", -1)),
                                    length=int(s.get("length", -1)), transform_descriptors=transforms)
        if storage[idx].offset < 0 or storage[idx].length < 0:
            raise SpecError("checkpoint metadata: negative byte range")
    return Metadata(state_dict_metadata=sd, storage_data=storage, storage_meta=StorageMeta())


class JsonMetadataReader(FileSystemReader):
    """FileSystemReader whose metadata comes from the checkpoint's JSON, never from ``.metadata``."""

    def __init__(self, path, metadata_json: dict[str, Any]):
        super().__init__(path)
        self._metadata_json = metadata_json

    def read_metadata(self, *args: Any, **kwargs: Any) -> Metadata:
        md = metadata_from_json(self._metadata_json)
        md.storage_meta.load_id = self.load_id
        return md


class TensorOnlyLoadPlanner(DefaultLoadPlanner):
    """DefaultLoadPlanner that refuses non-tensor items instead of ``torch.load(weights_only=False)``."""

    def load_bytes(self, read_item, value) -> None:
        raise SpecError(f"checkpoint item {read_item.dest_index.fqn!r} is not a tensor; refusing to unpickle it")
