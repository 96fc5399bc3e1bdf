"""A stand-in trial for the local pool test, in a module of its own so that the pool's spawned
processes import nothing heavy (no torch, no recbole) to run it."""
import os
import time


def echo_device(task):
    """Holds its slot (``task["device"]``) for 0.3 s; returns the slot, its process and its span."""
    start = time.time()
    time.sleep(0.3)
    return {"key": task["key"], "device": task["device"], "pid": os.getpid(), "start": start, "end": time.time()}


def die_on_key_1(task):
    """Kills its own process (as the OOM killer would) for ``task["key"] == "1"``; else echoes."""
    if task["key"] == "1":
        os._exit(9)
    return echo_device(task)
