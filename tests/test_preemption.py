"""The stop flag: set by SIGUSR2/SIGTERM in the owning process only, chained to the previous handler."""

import multiprocessing as mp
import os
import signal
import time

from pekd.engine.preemption import StopSignal


def _child(q) -> None:
    time.sleep(0.3)  # the parent signals us meanwhile
    q.put("alive")


def test_owner_sets_flag_and_chains_previous_handler():
    seen = []
    previous = signal.signal(signal.SIGUSR2, lambda s, f: seen.append(s))
    try:
        with StopSignal() as stop:
            os.kill(os.getpid(), signal.SIGUSR2)
            time.sleep(0.05)
            assert stop.requested and stop.signum == signal.SIGUSR2
            assert not seen, "the previous handler runs only after the checkpoint, via chain()"
            stop.chain()
        assert seen == [signal.SIGUSR2]
    finally:
        signal.signal(signal.SIGUSR2, previous)


def test_forked_worker_ignores_the_signal():
    with StopSignal() as stop:
        ctx = mp.get_context("fork")
        q = ctx.Queue()
        p = ctx.Process(target=_child, args=(q,))
        p.start()
        time.sleep(0.1)
        os.kill(p.pid, signal.SIGTERM)  # with the inherited handler, a worker must neither die nor act
        p.join(5)
        assert q.get(timeout=5) == "alive" and p.exitcode == 0
        assert not stop.requested
