"""The local cluster's `sacct`: `python slurm/sacct.py --dir DIR [-o FIELDS] [-j ID] ...`.

The local cluster (slurm/local_cluster.py) has no slurmdbd (it needs MySQL), so the real `sacct` would fail and
submitit could not see job states. Job ends go to a jobcomp text file instead, and DIR/bin/sacct - first on PATH in
`LocalCluster.env()` - runs this: the queries submitit makes (`-o JobID,State,NodeList --parsable2 -j ID`),
answered from squeue (live and recently finished jobs) and that file (older ones).
"""

from __future__ import annotations

import argparse
import re
import subprocess
import sys
from collections.abc import Iterable, Sequence
from pathlib import Path

try:
    from slurm.local_cluster import LocalCluster
except ImportError:  # run as a script, as DIR/bin/sacct does: slurm/ is on sys.path
    from local_cluster import LocalCluster  # type: ignore[no-redef]

SQUEUE_FIELDS = ("JobID", "Partition", "State", "NodeList", "JobName")
SQUEUE_FORMAT = "%i|%P|%T|%N|%j"
SACCT_FIELDS = (*SQUEUE_FIELDS, "ExitCode")


def _jobcomp_records(path: Path) -> Iterable[dict[str, str]]:
    """Finished jobs from the jobcomp/filetxt log, one `Key=Value ...` line each, in sacct's field names."""
    if not path.exists():
        return
    pair = re.compile(r"(\w+)=(.*?)(?=\s\w+=|\s*$)")
    for line in path.read_text(errors="replace").splitlines():
        rec = dict(pair.findall(line))
        if "JobId" not in rec:
            continue
        array_id = rec.get("ArrayJobId", "")
        yield {
            "JobID": f"{array_id}_{rec.get('ArrayTaskId', '')}" if array_id else rec["JobId"],
            "Partition": rec.get("Partition", ""),
            "State": rec.get("JobState", ""),
            "NodeList": rec.get("NodeList", ""),
            "JobName": rec.get("Name", ""),
            "ExitCode": rec.get("ExitCode", ""),
        }


# squeue shows transient states that real sacct reports as the state around them; submitit counts any state it
# does not know as finished, so a job being signalled (time-limit warning) must read as RUNNING.
SQUEUE_TO_SACCT = {"SIGNALING": "RUNNING", "CONFIGURING": "RUNNING", "RESIZING": "RUNNING",
                   "STAGE_OUT": "COMPLETING", "REQUEUE_FED": "REQUEUED", "REQUEUE_HOLD": "REQUEUED",
                   "RESV_DEL_HOLD": "PENDING"}


def _squeue_records(env: dict[str, str]) -> Iterable[dict[str, str]]:
    out = subprocess.run(
        ["squeue", "-h", "--states=all", "-o", SQUEUE_FORMAT], env=env, capture_output=True, text=True
    )
    for line in out.stdout.splitlines():
        values = line.split("|", len(SQUEUE_FIELDS) - 1)
        if len(values) == len(SQUEUE_FIELDS):
            rec = dict(zip(SQUEUE_FIELDS, values, strict=True)) | {"ExitCode": ""}
            rec["State"] = SQUEUE_TO_SACCT.get(rec["State"], rec["State"])
            yield rec


def sacct(argv: Sequence[str]) -> int:
    """Answer the sacct queries submitit makes (`-o JobID,State,NodeList --parsable2 -j ID ...`).

    The controller's view wins over the jobcomp file: a requeued job has a stale PENDING line there.
    """
    parser = argparse.ArgumentParser(prog="sacct", description="sacct stand-in of the local pekd cluster")
    parser.add_argument("--dir", type=Path, required=True)
    parser.add_argument("-o", "--format", default="JobID,JobName,Partition,State,ExitCode,NodeList")
    parser.add_argument("-j", "--jobs", action="append", default=[])
    parser.add_argument("-n", "--noheader", action="store_true")
    parser.add_argument("-P", "--parsable2", action="store_true", help="always on: output is '|'-separated")
    parser.add_argument("-X", "--allocations", action="store_true", help="always on: no job steps are listed")
    args = parser.parse_args(argv)
    fields = [f.split("%")[0] for f in args.format.split(",")]
    unknown = [f for f in fields if f not in SACCT_FIELDS]
    if unknown:
        parser.error(f"unsupported field(s) {unknown}; this stand-in knows {list(SACCT_FIELDS)}")
    cluster = LocalCluster(args.dir)
    records: dict[str, dict[str, str]] = {}
    for rec in _jobcomp_records(cluster.dir / "log" / "jobcomp.txt"):
        records[rec["JobID"]] = rec
    for rec in _squeue_records(cluster.env()):
        old = records.get(rec["JobID"])
        if old and old["State"] == rec["State"]:  # squeue has no exit code; the file's is for this run
            rec["ExitCode"] = old["ExitCode"]
        records[rec["JobID"]] = rec
    wanted = {j for arg in args.jobs for j in arg.split(",") if j}

    def selected(job_id: str) -> bool:
        return not wanted or job_id in wanted or job_id.split("_")[0] in wanted

    def sort_key(job_id: str) -> tuple[int, str]:
        return int(re.match(r"\d*", job_id).group() or 0), job_id

    if not args.noheader:
        print("|".join(fields))
    for job_id in sorted(filter(selected, records), key=sort_key):
        print("|".join(records[job_id][f] for f in fields))
    return 0


if __name__ == "__main__":
    sys.exit(sacct(sys.argv[1:]))
