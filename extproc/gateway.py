"""Everything an exchange needs, built once at start-up and shared by every stream of a processor."""

from __future__ import annotations

import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass, field

from extproc.recording.recorder import Recorder
from extproc.routing import Router
from extproc.settings import Settings


@dataclass
class Gateway:
    """Config, router and recorder; clock and id generator injectable for tests."""

    settings: Settings
    recorder: Recorder
    router: Router
    clock: Callable[[], float] = time.time
    new_id: Callable[[], str] = field(default=lambda: uuid.uuid4().hex)

    @classmethod
    def build(cls, settings: Settings, recorder: Recorder) -> Gateway:
        return cls(settings=settings, recorder=recorder, router=Router(settings))
