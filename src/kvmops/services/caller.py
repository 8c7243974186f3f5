"""Who is asking: the user, their role, the face they came through, their address."""

from __future__ import annotations

import os
import pwd
from dataclasses import dataclass
from typing import Literal

Via = Literal["cli", "api", "web"]


@dataclass(frozen=True)
class Caller:
    name: str
    role: str = "viewer"
    via: Via = "api"
    address: str | None = None
    # Root at the command line may name files outside the allowed directories (it can
    # read them anyway); API and web callers never can.
    trusted_paths: bool = False

    @classmethod
    def local(cls) -> Caller:
        """The user running the ``kvmops`` command."""
        uid = os.geteuid()
        try:
            name = pwd.getpwuid(uid).pw_name
        except KeyError:
            name = str(uid)
        return cls(name=name, role="admin", via="cli", trusted_paths=uid == 0)
