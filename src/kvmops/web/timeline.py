"""Backup chains per disk for the backup page's timeline (pure, no I/O).

A disk's full backup starts a chain; an incremental or differential point joins
the chain holding its parent. A point whose parent is not in the repository
starts a chain marked broken.
"""

from __future__ import annotations

from datetime import datetime

from pydantic import BaseModel, Field

from kvmops.backup.model import Manifest


class Point(BaseModel):
    id: str
    time: datetime
    type: str  # the disk's own type in this backup: full, incremental, differential
    backup_type: str  # the backup's type
    parent: str | None
    consistency: str
    size: int  # bytes written for this disk
    virtual_size: int


class Chain(BaseModel):
    points: list[Point] = Field(default_factory=list)
    broken: bool = False

    @property
    def size(self) -> int:
        return sum(p.size for p in self.points)


class DiskTimeline(BaseModel):
    target: str
    chains: list[Chain] = Field(default_factory=list)

    @property
    def points(self) -> int:
        return sum(len(c.points) for c in self.chains)


def build_timeline(manifests: list[Manifest]) -> list[DiskTimeline]:
    """Per disk target (sorted), its chains in time order, each point in time order."""
    ordered = sorted(manifests, key=lambda m: (m.time, m.id))
    disks: dict[str, DiskTimeline] = {}
    chain_of: dict[tuple[str, str], Chain] = {}  # (target, backup id) -> its chain
    for manifest in ordered:
        for record in manifest.disks:
            timeline = disks.setdefault(record.target, DiskTimeline(target=record.target))
            point = Point(id=manifest.id, time=manifest.time, type=str(record.type),
                          backup_type=str(manifest.type), parent=record.parent,
                          consistency=str(manifest.consistency), size=record.bytes_written,
                          virtual_size=record.virtual_size)
            chain = chain_of.get((record.target, record.parent)) if record.parent else None
            if chain is None:
                chain = Chain(broken=record.parent is not None)
                timeline.chains.append(chain)
            chain.points.append(point)
            chain_of[(record.target, manifest.id)] = chain
    return [disks[t] for t in sorted(disks)]


def newest_first(manifests: list[Manifest]) -> list[Manifest]:
    return sorted(manifests, key=lambda m: (m.time, m.id), reverse=True)
