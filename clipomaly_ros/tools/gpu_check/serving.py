"""The serving thread as the node has it, and what torch.compile did while frames were served.

The node loads and warms the runtime up on its inference thread, never on the thread that imported torch, and its
watchdog replaces a thread that ended by a new one that warms up again before it serves (CUDA graphs recorded by
``torch.compile`` belong to the thread that recorded them, pytorch#123177). :class:`ServingThread` does the same;
:class:`CompileWatch` counts compiles and CUDA graph recordings from torch's own counters, so that a recompile on a
served frame is found however fast it was.
"""

from __future__ import annotations

import threading
from concurrent.futures import ThreadPoolExecutor


class ServingThread:
    """One worker thread that runs what it is given (:meth:`call`); :meth:`restart` ends it and starts another,
    as the node's watchdog does."""

    def __init__(self):
        self.restarts = 0
        self._start()

    def _start(self) -> None:
        self._executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix=f"gpu-check-serving-{self.restarts}")
        self.name = self.call(self._name_off_the_main_thread)

    @staticmethod
    def _name_off_the_main_thread() -> str:
        if threading.current_thread() is threading.main_thread():  # the thread that imported torch
            raise RuntimeError("the serving thread is the main thread")
        return threading.current_thread().name

    def call(self, function, *args, **kwargs):
        """``function(*args, **kwargs)`` on the serving thread; its result, or what it raised."""
        return self._executor.submit(function, *args, **kwargs).result()

    def restart(self) -> None:
        """End the thread and start a new one (nothing is carried over but the objects)."""
        self._executor.shutdown(wait=True)
        self.restarts += 1
        self._start()

    def close(self) -> None:
        self._executor.shutdown(wait=True)


class CompileWatch:
    """While open, what ``torch.compile`` started: dynamo compiles (``torch._dynamo.utils.counters``: frames
    converted, graphs captured), CUDA graphs recorded (inductor's count of their recorded inputs) and, where this
    torch reports them (its compile start callbacks), each start by its trigger. :attr:`events` is empty when
    nothing was compiled or recorded."""

    def __init__(self):
        self.started: list[str] = []
        self._before: dict[str, int] = {}
        self._callback = None

    @staticmethod
    def _counts() -> dict[str, int]:
        from torch._dynamo.utils import counters

        return {"dynamo frames compiled": counters["frames"]["total"],
                "graphs captured": counters["stats"]["unique_graphs"],
                "CUDA graph inputs recorded": counters["inductor"]["cudagraph_recorded_non_static_inputs"]}

    def _on_start(self, arguments) -> None:
        trigger = getattr(arguments, "callback_trigger", None)
        self.started.append(getattr(trigger, "name", "compile"))

    def __enter__(self) -> "CompileWatch":
        import torch

        self._before = self._counts()
        handler = getattr(torch._dynamo, "callback_handler", None)
        if handler is not None and hasattr(handler, "register_start_callback"):
            self._callback = handler.register_start_callback(self._on_start)
        return self

    def __exit__(self, *exc) -> None:
        import torch

        self._after = self._counts()
        if self._callback is not None:
            torch._dynamo.callback_handler.remove_start_callback(self._callback)

    @property
    def events(self) -> list[str]:
        """What was compiled or recorded while the watch was open, e.g. ``["dynamo frames compiled +1",
        "compile start DYNAMO x1"]``."""
        after = getattr(self, "_after", None) or self._counts()
        events = [f"{name} +{after[name] - before}" for name, before in self._before.items() if after[name] > before]
        for trigger in sorted(set(self.started)):
            events.append(f"compile start {trigger} x{self.started.count(trigger)}")
        return events


__all__ = ["ServingThread", "CompileWatch"]
