"""The model-based fault test (issue 24): random sequences of events over one run directory's life, each event
followed by a check of the fault model's invariants (DESIGN.md, "Nothing lost"; docs/faults.md).

Events: start or resume a training run to a step (its checkpoints every N steps, pruned to trainer.keep_last), a
rerun at the step it stands at, SIGKILL / SIGTERM / SIGUSR2 / SIGINT (once or twice) at a chosen point of that run
-- a training step, a checkpoint save, inside an atomic write (its temp file whole, before the rename), right after
scalars were logged, during an evaluation or an export, before training (while the run directory is prepared) --,
a full disk, a read-only remount, a damaged or deleted checkpoint / metrics.csv / results.json / export, and an
evaluation of the exports. Invariants, after every event:

(a) the newest *verified* checkpoint is never lost: its step never goes down, unless the event itself damaged or
    deleted that file;
(b) every checkpoint that verifies holds the uninterrupted run's weights at its step, bit for bit, and its history
    is the uninterrupted run's;
(c) each (step, tag) appears once in metrics.csv and once in what TensorBoard shows of tb/ -- every step up to the
    newest checkpoint exactly once, with the uninterrupted run's values -- and results.json is JSON;
(d) a refusal is exit 2 with one `error:` line on stderr, nothing ever prints a Traceback, every exit status is one
    the event allows (0, 2, 3 for a stop, 130 for a second Ctrl-C, the signal's own death for a kill or for a
    signal before training), and no event outlives its deadline.

Every start is a real process with its own exit status and stderr, but not a fresh interpreter: a fork server
(`serve`, this module's `--serve`) imports torch and pekd once, and forks a child per start that runs
`python -m pekd.train` / `pekd.evaluate` the way the interpreter would (runpy as __main__, the top-level traceback
and exit status of an uncaught exception, threads joined and atexit run at the end). A start then costs what the
run itself costs, a fraction of a second on the tiny recipe, instead of seconds of imports. A signal "at a point"
is a real signal the child sends itself when its profiler sees the n-th call of that point, so a sequence replays
exactly; the soak (bench/fault_model.py) adds signals from outside at random moments.

Used by tests/test_fault_model.py (the suite's share) and bench/fault_model.py (`make soak`).
"""

from __future__ import annotations

import csv
import importlib
import json
import logging
import math
import os
import select
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from tests.train_helpers import REPO, TINY, env_for
from tests.train_helpers import train as train_process
from tests.warm_start import PRELOAD, become_fresh, die_by_sigint, ignored_signals, read_all, run_as_main, run_module

# ------------------------------------------------------------------ the recipe
STEPS_PER_EPOCH = 5  # data.subset=160 at batch 32
EPOCHS = 3
TOTAL = STEPS_PER_EPOCH * EPOCHS


def recipe(run_dir: Path, ckpt_every: int = 0, keep_last: int = 2, max_steps: int | None = None) -> list[str]:
    """Plain CE on 160 digits (5 steps an epoch, 3 epochs), evaluated on 100 in 4 batches, every step checked
    (trainer.sync_every_steps=1: a stop lands at the next step boundary): epoch ends, evaluations, best.pt and the
    final exports within 15 steps. ckpt_every, keep_last and max_steps are keys a resume may change."""
    return TINY + ["method=ce", "teacher=none", f"trainer.epochs={EPOCHS}", "data.subset=160", "data.val_subset=100",
                   "data.eval_batch_size=25", "trainer.sync_every_steps=1", f"trainer.ckpt_every_steps={ckpt_every}",
                   f"trainer.keep_last={keep_last}", f"trainer.max_steps={max_steps or 0}", f"run_dir={run_dir}"]


# ------------------------------------------------------------------ the fork server
# Where a signal can land: (profiler event, module, qualified name); "os:" names are C functions.
POINTS: dict[str, tuple[str, str, str]] = {
    "prepare": ("call", "pekd.engine.rundir", "prepare"),  # before training: the run directory is being prepared
    "step": ("call", "pekd.engine.trainer", "Trainer.optimizer_step"),  # inside a training step
    "save": ("call", "pekd.engine.trainer", "Trainer.save_checkpoint"),
    "replace": ("c_call", "os", "replace"),  # inside an atomic write: its temp file whole, not yet renamed
    "fsync": ("c_call", "os", "fsync"),  # inside a write: the temp file being synced (or its folder after)
    "logged": ("return", "pekd.engine.metrics", "Metrics.scalars"),  # scalars logged, nothing else done yet
    "evaluate": ("call", "pekd.engine.evaluation", "evaluate"),
    "export": ("call", "pekd.engine.export", "export_student"),
}
SIGNALS = {"KILL": [signal.SIGKILL], "TERM": [signal.SIGTERM], "USR2": [signal.SIGUSR2], "INT": [signal.SIGINT],
           "INT2": [signal.SIGINT, signal.SIGINT]}
HOOK_MISSING = 97  # a child's exit status when a point's function is gone (renamed): the harness needs updating


def _resolve(module: str, name: str) -> Any:
    obj: Any = importlib.import_module(module)
    for part in name.split("."):
        obj = getattr(obj, part)
    return obj


def _arm(point: str, n: int, sig: str) -> None:
    """Send `sig` to this process at the n-th time the profiler sees `point` (in the main thread only)."""
    event, module, name = POINTS[point]
    try:
        target = _resolve(module, name)
    except (ImportError, AttributeError) as e:
        print(f"fault_model: the point {point!r} ({module}:{name}) is gone: {e}", file=sys.stderr, flush=True)
        os._exit(HOOK_MISSING)
    code = getattr(target, "__code__", None)
    count = 0

    def profile(frame: Any, ev: str, arg: Any) -> None:
        nonlocal count
        if ev != event or (frame.f_code is not code if code is not None else arg is not target):
            return
        count += 1
        if count == n:
            sys.setprofile(None)
            for s in SIGNALS[sig]:
                os.kill(os.getpid(), s)

    sys.setprofile(profile)


# The config keys a start of the recipe varies (all of them keys a resume may change), by recipe() argument.
VARIED = {"ckpt_every": "trainer.ckpt_every_steps", "keep_last": "trainer.keep_last", "max_steps": "trainer.max_steps",
          "run_dir": "run_dir"}
BASE: Any = None  # the recipe composed once by the server (pekd.train.compose_config)


def _recipe_config(values: dict[str, Any]) -> Any:
    from omegaconf import OmegaConf

    cfg = BASE.copy()
    for name, value in values.items():
        OmegaConf.update(cfg, VARIED[name], value)
    return cfg


def _train_main(values: dict[str, Any]) -> None:
    """pekd.train.main for the recipe with `values`, its config composed once by the server: the same
    user_errors_exit, run, shutdown and exit 3 for a stopped run, without Hydra's composition (most of a start's
    CPU time). The server checked that this config equals the one compose_config makes."""
    from pekd.engine.distributed import shutdown
    from pekd.errors import user_errors_exit
    from pekd.train import run

    @user_errors_exit
    def main() -> None:
        signal.pthread_sigmask(signal.SIG_UNBLOCK, {signal.SIGINT})  # a Ctrl-C held since the fork lands here
        try:
            results = run(_recipe_config(values))
        finally:
            shutdown()
        if results["status"] == "preempted":
            sys.exit(3)

    main()


def _child(req: dict[str, Any], reply_fd: int) -> None:
    os.close(reply_fd)
    become_fresh(*(os.open(req[name], os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o644) for name in ("out", "err")),
                 req["ignored"])
    if req.get("recipe") is not None:
        # A Ctrl-C from outside is held until pekd's entry point runs: in a real process the time before it is the
        # interpreter's start and pekd.train's own import, where CPython's KeyboardInterrupt traceback is what any
        # program gets; here it was the harness's own lines (the soak's seed-74 chunk: a traceback from functools.wraps)
        signal.pthread_sigmask(signal.SIG_BLOCK, {signal.SIGINT})
        sys.argv = ["pekd.train", *recipe(**{k: v for k, v in req["recipe"].items()})]
        main: Callable[[], object] = lambda: _train_main(req["recipe"])  # noqa: E731
    else:
        main = run_module(req["module"], req["argv"], str(REPO))
    if req.get("hook"):
        _arm(*req["hook"])
    run_as_main(main)


def _preload(folder: Path) -> None:
    """Import everything a start imports and train the recipe a few steps (over an epoch end) once, so a child
    pays neither the imports nor torch's first-use set-up. Torch runs on one thread here: a forked child must not
    inherit a thread pool it lacks the threads of."""
    for module in (*PRELOAD, "pekd.train", "pekd.evaluate", "pekd.engine.trainer"):
        importlib.import_module(module)
    import logging

    import torch
    from omegaconf import OmegaConf

    from pekd.train import compose_config, run

    global BASE
    torch.set_num_threads(1)
    BASE = compose_config(recipe(Path("/nowhere")))
    values = {"ckpt_every": 1, "keep_last": 3, "max_steps": STEPS_PER_EPOCH + 1, "run_dir": str(folder / "warm-up")}
    composed = compose_config(recipe(**{**values, "run_dir": Path(values["run_dir"])}))
    assert OmegaConf.to_container(composed) == OmegaConf.to_container(_recipe_config(values)), \
        "the recipe's config with its varied keys updated differs from the one compose_config makes"
    streams = sys.stdout, sys.stderr
    try:
        run(composed)
    finally:
        for name, stream in zip(("stdout", "stderr"), streams, strict=True):
            tee = getattr(sys, name)
            setattr(sys, name, stream)
            if tee is not stream:
                tee.file.close()
        for handler in list(logging.getLogger("pekd").handlers):
            logging.getLogger("pekd").removeHandler(handler)
            handler.close()
    threads = os.listdir("/proc/self/task") if os.path.isdir("/proc/self/task") else ["?"]
    assert len(threads) == 1, f"the fork server runs {len(threads)} threads after its warm-up: forking is unsafe"


def serve(reply_fd: int, folder: Path) -> None:
    """Read one JSON request a line on stdin, fork a child for it, answer {"pid"} at once and {"status"} when it
    has ended (the child is this process's to reap); exit at the end of stdin."""
    _preload(folder)
    reply = os.fdopen(reply_fd, "w", buffering=1)
    reply.write(json.dumps({"ready": os.getpid()}) + "\n")
    for line in sys.stdin:
        req = json.loads(line)
        pid = os.fork()
        if pid == 0:
            try:
                _child(req, reply_fd)
            except KeyboardInterrupt:  # a Ctrl-C outside main (a second one while the first is reported): a
                die_by_sigint()  # fresh interpreter then ends by SIGINT itself
            finally:
                os._exit(98)
        reply.write(json.dumps({"pid": pid}) + "\n")
        _, status, usage = os.wait4(pid, 0)
        reply.write(json.dumps({"status": os.waitstatus_to_exitcode(status),
                                "cpu": usage.ru_utime + usage.ru_stime}) + "\n")


@dataclass
class Outcome:
    """One child's end: exit status (negative: killed by that signal), its output, seconds, past its deadline."""

    rc: int
    stdout: str
    stderr: str
    seconds: float
    cpu: float  # user + system seconds: what the child cost on a machine shared with other work
    timed_out: bool


class ForkServer:
    """The test side of `serve`: start one child at a time and wait for it within a deadline."""

    def __init__(self, folder: Path) -> None:
        """Not a train_helpers.Child: it outlives a test (a module's fixture closes it), and ends by itself at the
        end of its stdin when this process dies; its children die with it (PR_SET_PDEATHSIG)."""
        self.folder = folder
        folder.mkdir(parents=True, exist_ok=True)
        self.reply_r, reply_w = os.pipe()
        self.log = tempfile.TemporaryFile()
        self.proc = subprocess.Popen([sys.executable, "-m", "tests.fault_model", "--serve", str(reply_w), str(folder)],
                                     cwd=REPO, env=env_for(0, 1, 0), stdin=subprocess.PIPE, stdout=self.log,
                                     stderr=self.log, pass_fds=(reply_w,), start_new_session=True)
        os.close(reply_w)
        self.buffer = b""
        self.starts = 0
        self._read(300, "the fork server to import torch and pekd")

    def output(self) -> str:
        return read_all(self.log)

    def _read(self, timeout: float, what: str) -> dict[str, Any] | None:
        deadline = time.monotonic() + timeout
        while b"\n" not in self.buffer:
            left = deadline - time.monotonic()
            if left <= 0 or not select.select([self.reply_r], [], [], left)[0]:
                return None
            chunk = os.read(self.reply_r, 65536)
            if not chunk:
                raise AssertionError(f"the fork server died waiting for {what}: {self.output()[-3000:]}")
            self.buffer += chunk
        line, self.buffer = self.buffer.split(b"\n", 1)
        return json.loads(line)

    def start(self, module: str, argv: list[str], hook: tuple[str, int, str] | None = None,
              values: dict[str, Any] | None = None) -> int:
        """Start `python -m module argv`, or with `values` the recipe's training with them (recipe()'s
        arguments), its stop signal armed at `hook`; returns its pid."""
        self.starts += 1
        self.out, self.err = self.folder / "child.out", self.folder / "child.err"
        for path in (self.out, self.err):  # emptied here: a child signalled before it opens them leaves the last one's
            path.write_bytes(b"")
        assert self.proc.stdin is not None
        self.proc.stdin.write((json.dumps({"module": module, "argv": argv, "recipe": values, "hook": hook,
                                           "out": str(self.out), "err": str(self.err),
                                           "ignored": ignored_signals()}) + "\n").encode())
        self.proc.stdin.flush()
        self.t0 = time.monotonic()
        answer = self._read(60, "a child's pid")
        assert answer is not None and "pid" in answer, f"no pid from the fork server: {answer}"
        self.pid = int(answer["pid"])
        return self.pid

    def wait(self, timeout: float) -> Outcome:
        """The child's end; past `timeout` seconds its process group is killed and the outcome says so."""
        answer = self._read(timeout, "a child's end")
        timed_out = answer is None
        if timed_out:
            try:
                os.killpg(self.pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
            answer = self._read(60, "a killed child's end")
            assert answer is not None, "the fork server did not reap a killed child"
        seconds = time.monotonic() - self.t0
        return Outcome(int(answer["status"]), self.out.read_text(errors="replace"),
                       self.err.read_text(errors="replace"), seconds, float(answer["cpu"]), timed_out)

    def run(self, module: str, argv: list[str], hook: tuple[str, int, str] | None = None, timeout: float = 120,
            values: dict[str, Any] | None = None) -> Outcome:
        self.start(module, argv, hook, values)
        return self.wait(timeout)

    def signal(self, signals: list[int], after: float) -> None:
        """Send the started child `signals` `after` seconds from its start, unless it has ended by then."""
        time.sleep(max(0.0, self.t0 + after - time.monotonic()))
        for s in signals:
            if b"\n" in self.buffer or select.select([self.reply_r], [], [], 0)[0]:
                return  # ended (and reaped: its pid may be another process's by now)
            os.kill(self.pid, s)

    def close(self) -> None:
        try:
            os.killpg(self.proc.pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
        self.proc.wait()
        os.close(self.reply_r)
        self.log.close()


# ------------------------------------------------------------------ reading a run directory back
def checkpoints(run_dir: Path) -> list[Path]:
    from pekd.engine import checkpoint as ckpt

    return ckpt.list_checkpoints(run_dir / "checkpoints")


class Verified:
    """Checkpoints that verify (pekd.engine.checkpoint.load), by step; unchanged files are not loaded again."""

    def __init__(self) -> None:
        self.cache: dict[Path, tuple[tuple[int, int, int], dict[str, Any] | None]] = {}

    def read(self, run_dir: Path) -> dict[int, dict[str, Any]]:
        from pekd.engine import checkpoint as ckpt
        from pekd.errors import PekdError

        found: dict[int, dict[str, Any]] = {}
        for p in checkpoints(run_dir):
            try:
                st = p.stat()
            except FileNotFoundError:
                continue
            key = (st.st_ino, st.st_size, st.st_mtime_ns)
            hit = self.cache.get(p)
            if hit is None or hit[0] != key:
                try:
                    state: dict[str, Any] | None = ckpt.load(p)
                except PekdError:
                    state = None
                hit = self.cache[p] = (key, state)
            if hit[1] is not None:
                found[ckpt.checkpoint_step(p)] = hit[1]
        return found


def metric_rows(run_dir: Path) -> list[list[str]]:
    path = run_dir / "metrics.csv"
    if not path.is_file():
        return []
    with open(path, newline="", errors="replace") as f:
        return [r for r in csv.reader(f)][1:]


def tb_scalars(run_dir: Path) -> list[tuple[int, str]]:
    """(step, tag) of every scalar TensorBoard shows of tb/ (its purge rules applied, as TensorBoard does)."""
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    if not (run_dir / "tb").is_dir():
        return []
    logging.getLogger("tensorboard").setLevel(logging.ERROR)  # a notice per purge: what the model checks for
    acc = EventAccumulator(str(run_dir / "tb"), size_guidance={"scalars": 0})
    acc.Reload()
    return [(e.step, tag) for tag in acc.Tags()["scalars"] for e in acc.Scalars(tag)]


def strict_json(path: Path) -> Any:
    """json.loads that refuses NaN and Infinity, which are not JSON (a reader in another language fails on them)."""
    def refuse(c: str) -> None:
        raise ValueError(f"{c} is not JSON")

    return json.loads(path.read_text(), parse_constant=refuse)


def twice(items: list[Any]) -> list[Any]:
    return [k for k, n in Counter(items).items() if n > 1]


# ------------------------------------------------------------------ the uninterrupted run
@dataclass
class Reference:
    """The recipe run uninterrupted, a checkpoint every step: what every interrupted run must agree with."""

    models: dict[int, dict[str, Any]]  # global step -> model state
    history: list[dict[str, float]]  # per epoch, evaluations included
    values: dict[tuple[int, str], str]  # (step, tag) -> value in metrics.csv, for the deterministic tags
    tags: dict[int, set[str]]  # step -> the tags logged at that step
    ckpt_bytes: int  # one checkpoint's size: the unit of the disk-full amounts
    last_top1: float
    best_top1: float

    @classmethod
    def make(cls, folder: Path) -> Reference:
        """By a fresh `python -m pekd.train`: the fork server's children must agree with a real process."""
        run_dir = folder / "reference"
        [(rc, err)] = train_process(recipe(run_dir, ckpt_every=1, keep_last=10 * TOTAL))
        assert rc == 0, f"the reference run failed ({rc}): {err[-3000:]}"
        verified = Verified().read(run_dir)
        assert sorted(verified) == list(range(1, TOTAL + 1)), sorted(verified)
        results = strict_json(run_dir / "results.json")
        values, tags = {}, {}
        for step, tag, value, _ in metric_rows(run_dir):
            tags.setdefault(int(step), set()).add(tag)
            if tag != "train/images_per_s":  # a timing, the only tag that is not a function of the step
                values[(int(step), tag)] = value
        return cls({s: v["model"] for s, v in verified.items()}, verified[TOTAL]["history"], values, tags,
                   checkpoints(run_dir)[0].stat().st_size, results["last_top1"], results["best_top1"])


# ------------------------------------------------------------------ the disk
class Disk:
    """The run directory's filesystem: a small tmpfs of its own when this process may mount one (root: CI), so a
    sequence can fill it or remount it read-only; otherwise a plain folder, and those events are left out."""

    SIZE = 16 << 20

    def __init__(self, folder: Path) -> None:
        self.root = folder
        folder.mkdir(parents=True, exist_ok=True)
        done = subprocess.run(["mount", "-t", "tmpfs", "-o", f"size={self.SIZE}", "tmpfs", str(folder)],
                              capture_output=True, text=True)
        if done.returncode != 0 and os.geteuid() == 0:
            raise AssertionError(f"root cannot mount a tmpfs ({done.stderr.strip()}): the disk events must run in CI")
        self.mounted = done.returncode == 0
        self.read_only = False
        self.filler = folder / "filler"

    @property
    def full(self) -> bool:
        return self.filler.exists()

    def fill(self, leave: int) -> None:
        """Take all the space but `leave` bytes."""
        st = os.statvfs(self.root)
        size = max(0, st.f_bavail * st.f_frsize - leave)
        with open(self.filler, "wb") as f:
            for _ in range(size >> 20):
                f.write(bytes(1 << 20))
            f.write(bytes(size & ((1 << 20) - 1)))

    def free(self) -> None:
        self.filler.unlink()

    def remount(self, read_only: bool) -> None:
        subprocess.run(["mount", "-o", f"remount,{'ro' if read_only else 'rw'}", str(self.root)], check=True,
                       capture_output=True)
        self.read_only = read_only

    def close(self) -> None:
        if self.mounted:
            subprocess.run(["umount", "-l", str(self.root)], check=True)
        shutil.rmtree(self.root, ignore_errors=True)


# ------------------------------------------------------------------ the model
class Violation(AssertionError):
    """An invariant failed; the message ends with the sequence that led there. One subclass per invariant, so
    hypothesis tells them apart (it reports each distinct failure, each shrunk on its own)."""


class LostCheckpoint(Violation):
    """(a)"""


class WrongWeights(Violation):
    """(b)"""


class LoggedWrong(Violation):
    """(c): metrics.csv or TensorBoard"""


class BadResults(Violation):
    """(c): results.json"""


class BadExit(Violation):
    """(d)"""


class WrongOutcome(Violation):
    """What the model expects of a clean exit: the step reached, the status recorded, an export's top-1."""


KINDS: dict[str, type[Violation]] = {"a": LostCheckpoint, "b": WrongWeights, "c": LoggedWrong, "results": BadResults,
                                      "d": BadExit, "model": WrongOutcome}


@dataclass
class Env:
    """What every sequence shares: the fork server, the uninterrupted run and where sequences put their files."""

    server: ForkServer
    reference: Reference
    folder: Path
    deadline_s: float = 120.0  # one event's; a tiny run takes a second or two
    outside_signals: bool = False  # also signal starts from outside at random moments (the soak: not replayable)
    starts: dict[tuple[int, int, int], Path] = field(default_factory=dict)  # RunLife.start's copies
    figures: Counter[str] = field(default_factory=Counter)
    # every violation as it happened, before any shrinking: with signals from outside a replay can go otherwise
    # (hypothesis then ends with a Flaky error that no longer says what failed), and the soak reports these
    found: list[str] = field(default_factory=list)


DAMAGE_TARGETS = ("newest", "oldest", "metrics.csv", "results.json", "best.pt", "student.pt")
DAMAGES = ("flip", "truncate", "empty", "append")
DELETE_TARGETS = ("newest", "oldest", "checkpoints", "metrics.csv", "results.json", "best.pt")


class RunLife:
    """One sequence: the run directory, the events so far, and what the model expects of the next one."""

    def __init__(self, env: Env) -> None:
        self.env, self.ref = env, env.reference
        env.figures["sequences"] += 1
        self.home = Path(tempfile.mkdtemp(prefix="seq-", dir=env.folder))
        self.disk = Disk(self.home / "disk")
        self.run_dir = self.disk.root / "run"
        self.verified_reader = Verified()
        self.events: list[str] = []
        self.verified: dict[int, dict[str, Any]] = {}
        self.metrics_damaged = False  # metrics.csv damaged or deleted in this sequence: its lost rows stay lost
        self.damaged: dict[str, bytes] = {}  # file -> its damaged bytes, until pekd writes it anew
        self.exports_expected = False

    # ------------------------------------------------------------ helpers
    def fail(self, kind: str, what: str, out: Outcome | None = None) -> None:
        tail = "" if out is None else f"\nexit {out.rc}, stderr:\n{out.stderr[-2500:]}"
        steps = "\n".join(f"  {i + 1}. {e}" for i, e in enumerate(self.events))
        message = f"{what}{tail}\nsequence:\n{steps}"
        self.env.found.append(f"{KINDS[kind].__name__}: {message}")
        raise KINDS[kind](message)

    def newest(self) -> int:
        return max(self.verified, default=0)

    def close(self) -> None:
        self.disk.close()
        shutil.rmtree(self.home, ignore_errors=True)

    # ------------------------------------------------------------ events
    def train(self, steps: int | None, ckpt_every: int, keep_last: int, fault: tuple[str, str, int] | None,
              outside: tuple[str, float] | None = None) -> Outcome:
        """Start or resume the run to `steps` past its newest verified checkpoint (None: to its end). `fault`:
        (signal, point, n), the signal sent at the n-th time the child reaches that point; `outside`: (signal,
        seconds), sent from here that long after the start (wherever the child is then)."""
        start = self.newest()
        target = None if steps is None else min(start + steps, TOTAL)
        target = target or None  # to step 0 is no run: trainer.max_steps=0 means no limit, a start to the end
        hook = None if fault is None else (fault[1], fault[2], fault[0])
        self.events.append(f"train(max_steps={target}, ckpt_every={ckpt_every}, keep_last={keep_last}, "
                           f"fault={fault}{'' if outside is None else f', outside={outside}'})  [resumes from {start}]")
        self.env.figures["train"] += 1
        self.env.figures[f"fault {fault[0]} at {fault[1]}" if fault else
                         f"fault {outside[0]} from outside" if outside else "no fault"] += 1
        names = checkpoints(self.run_dir)
        server = self.env.server
        server.start("pekd.train", [], hook, {"run_dir": str(self.run_dir), "ckpt_every": ckpt_every,
                                              "keep_last": keep_last, "max_steps": target or 0})
        if outside is not None:
            server.signal(SIGNALS[outside[0]], outside[1])
            fault = (outside[0], "outside", 0)
        out = server.wait(self.env.deadline_s)
        self.env.figures[f"rc {out.rc}"] += 1
        allowed = {0}
        if fault is not None:
            allowed |= {"KILL": {-9}, "TERM": {3, -15}, "USR2": {3, -12}, "INT": {3, 130}, "INT2": {3, 130}}[fault[0]]
        if self.disk.full or self.disk.read_only:
            allowed.add(2)
        if outside is not None and not any(x.startswith("run ") for x in out.stderr.splitlines()):
            # landed before pekd's start line, while Python and pekd start up (the stop handlers are not in place
            # yet): the signal's own default action ends the process, before anything of the run was written
            allowed |= {-s for s in SIGNALS[outside[0]]}
        if names and not self.verified:  # checkpoints none of which verifies: refused, not started afresh
            allowed = {2} | (allowed - {0, 3})
        self.check_process(out, allowed)
        self.after(None, out)
        if out.rc == 0:
            reached = TOTAL if target is None else target
            if self.newest() != reached:
                self.fail("model",
                          f"exit 0 for max_steps={target} from step {start}, but the newest verified checkpoint is "
                          f"{self.newest()}, not {reached}", out)
            self.check_results({"completed"} if reached == TOTAL and target is None else {"stopped", "completed"},
                               reached, out)
            if target is None:
                self.exports_expected = True
        elif out.rc == 3:
            self.check_results({"preempted"}, self.newest(), out)
        return out

    def start(self, steps: int, ckpt_every: int, keep_last: int) -> None:
        """A sequence's first event: a start to `steps`. Its run directory depends on nothing else (the recipe is
        deterministic), so the first such start's is kept and later sequences begin from a copy of it: the suite's
        200 sequences cost a start less each."""
        key = (steps, ckpt_every, keep_last)
        kept = self.env.starts.get(key)
        if kept is None:
            out = self.train(steps, ckpt_every, keep_last, None)
            if out.rc == 0:
                kept = self.env.folder / "starts" / "-".join(map(str, key))
                shutil.copytree(self.run_dir, kept, symlinks=True)
                self.env.starts[key] = kept
            return
        self.events.append(f"train(max_steps={steps}, ckpt_every={ckpt_every}, keep_last={keep_last}, fault=None)  "
                           "[resumes from 0; the run directory of the first such start, copied]")
        self.env.figures["train (copied)"] += 1
        shutil.copytree(kept, self.run_dir, symlinks=True)
        self.verified = self.verified_reader.read(self.run_dir)

    def damage(self, target: str, how: str) -> None:
        path = self.pick(target)
        self.events.append(f"damage({target}, {how})  [{path.name if path else 'nothing there'}]")
        if path is None or self.disk.read_only:
            return
        self.env.figures["damage"] += 1
        size = path.stat().st_size
        try:
            if how == "flip":
                with open(path, "r+b") as f:
                    f.seek(size // 2)
                    chunk = f.read(8)
                    f.seek(size // 2)
                    f.write(bytes(b ^ 0xFF for b in chunk))
            elif how == "truncate":
                os.truncate(path, size // 2)
            elif how == "empty":
                os.truncate(path, 0)
            else:
                with open(path, "ab") as f:
                    f.write(b"\x00garbage\xff\n")
        except OSError:  # the disk is full: the append did not happen (or half of it)
            pass
        self.note_damage(path)

    def delete(self, target: str) -> None:
        paths = checkpoints(self.run_dir) if target == "checkpoints" else [p for p in [self.pick(target)] if p]
        self.events.append(f"delete({target})  [{', '.join(p.name for p in paths) or 'nothing there'}]")
        if not paths or self.disk.read_only:
            return
        self.env.figures["delete"] += 1
        for p in paths:
            p.unlink()
            self.note_damage(p)

    def evaluate(self, which: str) -> None:
        """`python -m pekd.evaluate` on the run (its student.pt) or its best.pt: the export's own top-1."""
        target = self.run_dir if which == "student.pt" else self.run_dir / "best.pt"
        self.events.append(f"evaluate({which})")
        self.env.figures["evaluate"] += 1
        out = self.env.server.run("pekd.evaluate", [str(target)], None, self.env.deadline_s)
        export = self.run_dir / which
        whole = export.is_file() and str(export) not in self.damaged
        self.check_process(out, {0, 2} if not whole else {0})
        if out.rc == 0 and whole:
            expected = self.ref.last_top1 if which == "student.pt" else None
            if which == "best.pt":
                results = self.run_dir / "results.json"
                expected = strict_json(results).get("best_top1") if str(results) not in self.damaged else None
            if expected is not None and f"top-1 {expected:.2f}%" not in out.stdout:
                self.fail("model",
                          f"{which} evaluates to {out.stdout.strip()!r}, not the run's top-1 {expected:.2f}%", out)
        self.after(None, out)

    def fill_disk(self, checkpoints_left: float) -> None:
        leave = int(checkpoints_left * self.ref.ckpt_bytes)
        self.events.append(f"fill_disk(leave {checkpoints_left} checkpoints = {leave} bytes)")
        self.env.figures["disk full"] += 1
        self.disk.fill(leave)

    def free_disk(self) -> None:
        self.events.append("free_disk()")
        self.disk.free()

    def remount(self, read_only: bool) -> None:
        self.events.append(f"remount({'ro' if read_only else 'rw'})")
        self.env.figures["read-only" if read_only else "read-write"] += 1
        self.disk.remount(read_only)

    def pick(self, target: str) -> Path | None:
        if target in ("newest", "oldest"):
            names = checkpoints(self.run_dir)
            return (names[0] if target == "newest" else names[-1]) if names else None
        path = self.run_dir / target
        return path if path.is_file() else None

    def note_damage(self, path: Path) -> None:
        """The model's side of a damage or deletion: what the next checks must not hold against pekd."""
        if path.name == "metrics.csv":
            self.metrics_damaged = True
        self.damaged[str(path)] = path.read_bytes() if path.exists() else b""
        self.after(path, None)

    # ------------------------------------------------------------ invariants
    def check_process(self, out: Outcome, allowed: set[int]) -> None:
        """(d): a deadline, no traceback, an allowed exit status, and a refusal is one `error:` line."""
        if out.timed_out:
            self.fail("d", f"no end within {self.env.deadline_s:.0f} s (killed)", out)
        if out.rc == HOOK_MISSING:
            self.fail("d", "a fault point's function is gone from pekd: update tests/fault_model.py's POINTS", out)
        if "Traceback" in out.stderr or "Logging error" in out.stderr:
            self.fail("d", "a traceback on stderr", out)
        errors = [line for line in out.stderr.splitlines() if line.startswith("error:")]
        if out.rc not in allowed:
            self.fail("d", f"exit status {out.rc}; this event allows {sorted(allowed)}", out)
        # killed by a signal it was sent (rc < 0), a refusal may have said its line already
        if (out.rc >= 0 and (out.rc == 2) != (len(errors) == 1)) or len(errors) > 1:
            self.fail("d", f"exit {out.rc} with {len(errors)} `error:` lines (a refusal is exit 2 and one line)", out)

    def after(self, damaged: Path | None, out: Outcome | None) -> None:
        """(a), (b), (c) after an event; `damaged`: the file the event itself damaged or deleted."""
        from pekd.engine import checkpoint as ckpt

        before = self.verified
        self.verified = self.verified_reader.read(self.run_dir)
        spared = {s: v for s, v in before.items() if damaged is None or ckpt.ckpt_path(damaged.parent, s) != damaged}
        if max(spared, default=0) > self.newest():
            self.fail("a", f"(a) the newest verified checkpoint was step {max(spared)}; now it is "
                      f"{self.newest() or 'none'}", out)
        for step, state in self.verified.items():
            if step not in self.ref.models or state["global_step"] != step:
                self.fail("b", f"(b) ckpt-{step:09d}.pt holds global step {state['global_step']}", out)
            model = self.ref.models[step]
            if state["model"].keys() != model.keys() or any(not state["model"][k].equal(model[k]) for k in model):
                self.fail("b",
                          f"(b) ckpt-{step:09d}.pt's weights differ from the uninterrupted run's at step {step}", out)
            done = [h for h in state["history"] if "top1" in h]
            if done != [h for h in self.ref.history if "top1" in h][:len(done)]:
                self.fail("b", f"(b) ckpt-{step:09d}.pt's history differs from the uninterrupted run's: {done}", out)
        if out is not None:
            self.check_metrics(out)

    def check_metrics(self, out: Outcome) -> None:
        """(c): each (step, tag) once in metrics.csv and in TensorBoard's view of tb/; while metrics.csv was never
        damaged, every step up to the newest checkpoint is there exactly once, with the uninterrupted values."""
        rows = metric_rows(self.run_dir)
        keys = [(int(r[0]), r[1]) for r in rows if len(r) == 4 and r[0].isdigit()]
        if twice(keys):
            self.fail("c", f"(c) metrics.csv holds {sorted(twice(keys))[:4]} more than once", out)
        shown = tb_scalars(self.run_dir)
        if twice(shown):
            self.fail("c", f"(c) TensorBoard shows {sorted(twice(shown))[:4]} more than once", out)
        settled = self.settled()
        for name, have, check in (("metrics.csv", set(keys), not self.metrics_damaged),
                                  ("TensorBoard", set(shown), True)):
            missing = sorted(settled - have)
            if check and missing:
                self.fail("c",
                          f"(c) {name} lacks {missing[:4]} (steps up to the newest checkpoint are logged once)", out)
        if not self.metrics_damaged:
            for r in rows:
                want = self.ref.values.get((int(r[0]), r[1])) if len(r) == 4 and r[0].isdigit() else None
                if want is not None and (int(r[0]), r[1]) in settled and r[2] != want:
                    self.fail("c", f"(c) metrics.csv has {r[1]}={r[2]} at step {r[0]}; the uninterrupted run logged "
                              f"{want}", out)
        results = self.run_dir / "results.json"
        if results.is_file() and self.damaged.get(str(results)) != results.read_bytes():
            self.damaged.pop(str(results), None)
            try:
                strict_json(results)
            except ValueError as e:
                self.fail("results", f"(c) results.json is not JSON: {e}", out)
        for name in ("best.pt", "student.pt"):
            path = self.run_dir / name
            if str(path) in self.damaged and path.is_file() and self.damaged[str(path)] != path.read_bytes():
                self.damaged.pop(str(path))

    def settled(self) -> set[tuple[int, str]]:
        """(step, tag) pairs that must all be logged by now: every step's training scalars up to the newest verified
        checkpoint, and the evaluations that checkpoint's history holds (not one still pending, nor that of an
        epoch whose last step was reached at max_steps: its end, and evaluation, come with the next start)."""
        if not self.verified:
            return set()
        newest = self.newest()
        evaluated = {int(h["epoch"]) for h in self.verified[newest]["history"] if "top1" in h}
        return {(s, t) for s in range(1, newest + 1) for t in self.ref.tags[s]
                if not t.startswith("val/") or s // STEPS_PER_EPOCH - 1 in evaluated}

    def check_results(self, statuses: set[str], step: int, out: Outcome) -> None:
        results = self.run_dir / "results.json"
        try:
            r = strict_json(results)
        except (OSError, ValueError) as e:
            self.fail("results", f"results.json after exit {out.rc}: {e}", out)
        if r["status"] not in statuses or r["global_step"] != step:
            self.fail("results", f"results.json says {r['status']} at step {r['global_step']}; expected one of "
                      f"{sorted(statuses)} at {step}", out)
        self.damaged.pop(str(results), None)
        if math.isnan(r.get("best_top1") or 0.0):
            self.fail("results", "results.json holds NaN", out)


# ------------------------------------------------------------------ the generator (hypothesis)
def machine(env: Env) -> type:
    """A hypothesis RuleBasedStateMachine over `env`: each example is one run directory's life (a sequence)."""
    from hypothesis import strategies as st
    from hypothesis.stateful import RuleBasedStateMachine, initialize, precondition, rule

    steps = st.integers(0, 8)
    ckpt_every = st.sampled_from([0, 1, 2, 3])
    keep_last = st.sampled_from([1, 2, 3])
    faults = st.tuples(st.sampled_from(sorted(SIGNALS)), st.sampled_from(list(POINTS)), st.integers(1, 8))

    class FaultModel(RuleBasedStateMachine):
        def __init__(self) -> None:
            super().__init__()
            self.life = RunLife(env)

        @initialize(steps=st.integers(1, 8), ckpt_every=ckpt_every, keep_last=keep_last)
        def start(self, steps: int, ckpt_every: int, keep_last: int) -> None:
            self.life.start(steps, ckpt_every, keep_last)

        @rule(steps=st.none() | steps, ckpt_every=ckpt_every, keep_last=keep_last)
        def resume(self, steps: int | None, ckpt_every: int, keep_last: int) -> None:
            self.life.train(steps, ckpt_every, keep_last, None)

        @rule(ckpt_every=ckpt_every, keep_last=keep_last)
        def rerun(self, ckpt_every: int, keep_last: int) -> None:
            """The run stopped at its max_steps, started again as it was: trains nothing (with no checkpoint left,
            a start to the end: see Life.train)."""
            self.life.train(0, ckpt_every, keep_last, None)

        @rule(steps=st.none() | steps, ckpt_every=ckpt_every, keep_last=keep_last, fault=faults)
        def interrupted(self, steps: int | None, ckpt_every: int, keep_last: int, fault: tuple[str, str, int]) -> None:
            self.life.train(steps, ckpt_every, keep_last, fault)

        @precondition(lambda self: env.outside_signals)
        @rule(steps=st.none() | steps, ckpt_every=ckpt_every, keep_last=keep_last,
              outside=st.tuples(st.sampled_from(sorted(SIGNALS)), st.floats(0.0, 2.5)))
        def signalled_from_outside(self, steps: int | None, ckpt_every: int, keep_last: int,
                                   outside: tuple[str, float]) -> None:
            self.life.train(steps, ckpt_every, keep_last, None, outside)

        @rule(what=st.sampled_from(DAMAGE_TARGETS), how=st.sampled_from(DAMAGES))
        def damage(self, what: str, how: str) -> None:
            self.life.damage(what, how)

        @rule(what=st.sampled_from(DELETE_TARGETS))
        def delete(self, what: str) -> None:
            self.life.delete(what)

        @rule(which=st.sampled_from(["student.pt", "best.pt"]))
        def evaluate(self, which: str) -> None:
            self.life.evaluate(which)

        @precondition(lambda self: self.life.disk.mounted and not self.life.disk.full and not self.life.disk.read_only)
        @rule(checkpoints_left=st.sampled_from([0.0, 0.3, 1.2, 1.7, 2.6]))
        def fill_disk(self, checkpoints_left: float) -> None:
            self.life.fill_disk(checkpoints_left)

        @precondition(lambda self: self.life.disk.full and not self.life.disk.read_only)
        @rule()
        def free_disk(self) -> None:
            self.life.free_disk()

        @precondition(lambda self: self.life.disk.mounted and not self.life.disk.read_only)
        @rule()
        def remount_read_only(self) -> None:
            self.life.remount(True)

        @precondition(lambda self: self.life.disk.read_only)
        @rule()
        def remount_read_write(self) -> None:
            self.life.remount(False)

        def teardown(self) -> None:
            self.life.close()

    return FaultModel


def open_env(folder: Path) -> Env:
    """The fork server and the uninterrupted run, for a test module or a soak."""
    server = ForkServer(folder / "server")
    try:
        return Env(server, Reference.make(folder), folder)
    except BaseException:
        server.close()
        raise


if __name__ == "__main__" and sys.argv[1:2] == ["--serve"]:
    serve(int(sys.argv[2]), Path(sys.argv[3]))
