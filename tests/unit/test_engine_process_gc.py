"""Start-up ends with the heap frozen (engine.process.freeze_startup_heap, called by
until_signalled): what start-up built is out of every later collection, and garbage made while
serving is still collected. Run in a child interpreter so the test runner's own heap is untouched.
"""

from __future__ import annotations

import subprocess
import sys
import textwrap
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]

CHILD = textwrap.dedent(
    """
    import asyncio, gc, os, signal, weakref
    from engine.process import until_signalled

    assert gc.get_freeze_count() == 0
    class Node:
        pass

    async def main():
        loop = asyncio.get_running_loop()
        loop.call_later(0.05, os.kill, os.getpid(), signal.SIGTERM)
        await until_signalled()  # returns on the SIGTERM, having frozen the heap first
        frozen = gc.get_freeze_count()
        a, b = Node(), Node()
        a.other, b.other = b, a  # a reference cycle made "while serving"
        ref = weakref.ref(a)
        del a, b
        gc.collect()
        print(frozen, ref() is None)

    asyncio.run(main())
    """
)


def test_until_signalled_freezes_the_startup_heap_and_later_cycles_are_still_collected() -> None:
    out = subprocess.run(
        [sys.executable, "-c", CHILD], cwd=REPO, capture_output=True, text=True, timeout=60, check=True
    ).stdout.split()
    frozen, collected = int(out[0]), out[1]
    assert frozen > 1000  # the modules, classes and functions imported at start-up
    assert collected == "True"
