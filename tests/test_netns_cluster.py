"""Two-node jobs across a real network boundary: the local cluster with each slurmd in a network namespace of its own
(slurm/netns.py), so the rendezvous and gloo's all-reduces between the ranks cross veths and a bridge.

(a) A partition: node 2's cable is unplugged mid-run. The start ends (gloo's timeout, trainer.dist_timeout_s, on
    rank 0; slurmctld declaring the silent node down after SlurmdTimeout), the job is requeued, and once the cable
    is back it resumes from its newest checkpoint and completes.
(b) A slow, lossy link: node 2's traffic goes through a token bucket (tbf, both directions) and loses 1% of its
    packets at random (nftables, both directions). Training completes, slower, with the same final weights as over
    the clean link: gloo's sums are deterministic for a fixed world size, TCP hides the losses.

This kernel has no netem (CONFIG_NET_SCH_NETEM is off), so the slow link is a rate limit rather than a fixed delay;
the drops need Debian's nftables (the kernel's nf_tables does the work). Figures are printed (pytest -s).
"""

from __future__ import annotations

import json
import re
import shutil
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
import torch

from launchers import submit
from pekd.cluster.launch import newest_checkpoint_step
from pekd.models import read_weights
from slurm.local_cluster import LocalCluster
from tests.launcher_helpers import finish, restart_count, run_log
from tests.slurm_fixture import wait_for
from tests.train_helpers import TINY

pytestmark = pytest.mark.slow

DIST_TIMEOUT_S = 20
# After the partition: rank 0 raises after DIST_TIMEOUT_S, but srun cannot reach the silent node to end its task,
# so the start ends when slurmctld declares the node down: SlurmdTimeout (30 s in slurm.conf) after its last
# answer, found by a ping every SlurmdTimeout/3 s, plus the requeue itself.
PARTITION_SLACK_S = 45
RECIPE = [*TINY, "method=ce", "teacher=none", "trainer.ckpt_every_steps=10",
          f"trainer.dist_timeout_s={DIST_TIMEOUT_S}"]
STEPS_PER_EPOCH = 44
NFT_TABLE = "pekd_impair"


@pytest.fixture(scope="module")
def netns_cluster(tmp_path_factory: pytest.TempPathFactory) -> Iterator[LocalCluster]:
    """One namespaced 2-node cluster for the module; on stop nothing of its network may be left."""
    cluster = LocalCluster(tmp_path_factory.mktemp("nsc"), nodes=2, cpus=2, netns=True)
    cluster.start()
    try:
        yield cluster
    finally:
        cluster.stop()
        assert cluster.net.exists() == [], "stop left namespaces, links or hosts files behind"


@pytest.fixture
def ns_env(netns_cluster: LocalCluster, monkeypatch: pytest.MonkeyPatch) -> LocalCluster:
    for key, value in netns_cluster.env().items():
        monkeypatch.setenv(key, value)
    return netns_cluster


def _args(cluster: LocalCluster, folder: Path) -> list[str]:
    return ["--folder", str(folder), "--gpus", "0", "--nodes", "2", "--partition", cluster.partition, "--time", "20"]


def _sh(*cmd: str) -> str:
    return subprocess.run(cmd, check=True, capture_output=True, text=True, timeout=30).stdout


def _in_ns(cluster: LocalCluster, node: int, *cmd: str) -> str:
    return _sh("nsenter", f"--net=/run/netns/{cluster.net.nodes[node].ns}", *cmd)


def test_nodes_have_their_own_addresses_and_names(netns_cluster: LocalCluster) -> None:
    net = netns_cluster.net
    for i, node in enumerate(net.nodes):
        assert f"inet {node.addr}/24" in _in_ns(netns_cluster, i, "ip", "-o", "-4", "addr", "show", "dev", "eth0")
    assert netns_cluster.node_names == [n.name for n in net.nodes]
    conf = netns_cluster.conf.read_text()
    assert f"({net.gateway})" in conf and all(f"NodeAddr={n.addr}" in conf for n in net.nodes)


def test_a_partitioned_node_ends_the_start_which_is_requeued_and_resumes(ns_env: LocalCluster,
                                                                          tmp_path: Path) -> None:
    run_dir, epochs = tmp_path / "run", 3
    veth = ns_env.net.nodes[1].veth
    [job] = submit.main([*_args(ns_env, tmp_path), *RECIPE, f"trainer.epochs={epochs}", f"run_dir={run_dir}"])
    wait_for(lambda: newest_checkpoint_step(run_dir) >= 20, 240, "two checkpoints before the partition")
    try:
        _sh("ip", "link", "set", veth, "down")
        cut = time.monotonic()
        newest = newest_checkpoint_step(run_dir)
        wait_for(lambda: restart_count(ns_env, job.job_id) >= 1, DIST_TIMEOUT_S + PARTITION_SLACK_S + 30,
                 "the partitioned start to end and requeue")
        ended = time.monotonic() - cut
        assert newest_checkpoint_step(run_dir) == newest, "a checkpoint was written after the partition"
    finally:
        _sh("ip", "link", "set", veth, "up")
    healed = time.monotonic()
    wait_for(lambda: "resumed from" in run_log(run_dir), 180, "the requeued job to resume after healing")
    resumed = time.monotonic() - healed
    assert finish(job, timeout_s=300) == "COMPLETED"
    print(f"\npartition -> start ended and job requeued: {ended:.1f} s (dist_timeout_s={DIST_TIMEOUT_S}, "
          f"slack {PARTITION_SLACK_S} s); link healed -> resumed: {resumed:.1f} s")
    assert ended <= DIST_TIMEOUT_S + PARTITION_SLACK_S

    log = run_log(run_dir)
    assert re.search(rf"resumed from \S+/ckpt-0*{newest}\.pt", log), log[-3000:]
    assert log.count("resumed from") == 1
    results = json.loads((run_dir / "results.json").read_text())
    assert (results["status"], results["global_step"], results["world_size"]) == \
        ("completed", epochs * STEPS_PER_EPOCH, 2)


def _impair(cluster: LocalCluster, node: int) -> None:
    """Node `node`'s link: 4 Mbit/s each way through a token bucket, 1% of packets dropped each way."""
    nic = cluster.net.nodes[node].veth
    tbf = ["root", "tbf", "rate", "4mbit", "burst", "16kb", "latency", "200ms"]
    _sh("tc", "qdisc", "add", "dev", nic, *tbf)
    _in_ns(cluster, node, "tc", "qdisc", "add", "dev", "eth0", *tbf)
    rules = (f"table inet {NFT_TABLE} {{\n"
             "  chain in { type filter hook input priority 0; numgen random mod 100 < 1 counter drop; }\n"
             "  chain out { type filter hook output priority 0; numgen random mod 100 < 1 counter drop; }\n}\n")
    subprocess.run(["nsenter", f"--net=/run/netns/{cluster.net.nodes[node].ns}", "nft", "-f", "-"], input=rules,
                   check=True, text=True, timeout=30)


def _heal(cluster: LocalCluster, node: int) -> str:
    """Undo _impair; returns what the impairment did (packets dropped, tbf's statistics)."""
    stats = _in_ns(cluster, node, "nft", "list", "table", "inet", NFT_TABLE)
    stats += _sh("tc", "-s", "qdisc", "show", "dev", cluster.net.nodes[node].veth)
    subprocess.run(["tc", "qdisc", "del", "dev", cluster.net.nodes[node].veth, "root"], timeout=30)
    _in_ns(cluster, node, "tc", "qdisc", "del", "dev", "eth0", "root")
    _in_ns(cluster, node, "nft", "delete", "table", "inet", NFT_TABLE)
    return stats


def test_a_slow_lossy_link_gives_the_same_weights_more_slowly(ns_env: LocalCluster, tmp_path: Path) -> None:
    assert shutil.which("nft"), "nft not found: install Debian's nftables (scripts/setup.sh does)"
    recipe = [*RECIPE, "trainer.epochs=1"]
    took = {}
    for name in ("clean", "impaired"):
        if name == "impaired":
            _impair(ns_env, 1)
        try:
            began = time.monotonic()
            [job] = submit.main([*_args(ns_env, tmp_path), *recipe, f"run_dir={tmp_path / name}"])
            assert finish(job, timeout_s=400) == "COMPLETED"
            took[name] = time.monotonic() - began
        finally:
            if name == "impaired":
                stats = _heal(ns_env, 1)
    dropped = [int(n) for n in re.findall(r"counter packets (\d+)", stats)]
    print(f"\nclean link: {took['clean']:.1f} s; 4 Mbit/s, 1% loss each way: {took['impaired']:.1f} s; "
          f"packets dropped (in, out): {dropped}")
    assert sum(dropped) > 0, stats
    assert took["impaired"] > took["clean"]
    clean = read_weights(str(tmp_path / "clean" / "student.pt"))[0]
    impaired = read_weights(str(tmp_path / "impaired" / "student.pt"))[0]
    assert clean.keys() == impaired.keys() and all(torch.equal(clean[k], impaired[k]) for k in clean)
