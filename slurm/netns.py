"""A network of its own for each node of the local cluster: one network namespace per slurmd, joined by veth pairs
to a bridge in the root namespace, each with its own address and a name that resolves inside every node.

Why: with every node on 127.0.0.x, a job's rendezvous and all-reduces never leave one network stack, so a
partition or a slow link between nodes cannot be tried. Here node i lives in namespace `pekd-<id>-n<i>` with
address 10.77.<subnet>.<i+1> on its `eth0`; the bridge `pk<id>br` holds 10.77.<subnet>.1, where slurmctld (in
the root namespace) answers. The veth's root-side end `pk<id>n<i>` is the node's cable: `ip link set ... down`
unplugs it, `tc` on it shapes what the node receives and nftables inside the namespace what it sends.

Names resolve through /etc/netns/<ns>/hosts, which `exec_prefix` bind-mounts over /etc/hosts in a mount
namespace of slurmd's own, seen by everything it starts (job steps, ranks): the machine's own hosts file, with the
machine's host name mapped to the node's address (as on a real host: srun tells peers where to reach it by that
name, and gloo binds to the address it resolves to) and every node's name. The shared /etc/hosts is never edited.
<id> and <subnet> come from the cluster directory, so two clusters can run side by side; `create` first removes
whatever a crashed start left behind under the same names, and `destroy` removes everything whether or not it
exists.
"""

from __future__ import annotations

import hashlib
import shutil
import socket
import subprocess
from dataclasses import dataclass
from pathlib import Path

NETNS_ETC = Path("/etc/netns")
PREFIX = "10.77"
SBIN = "/usr/sbin:/usr/bin:/sbin:/bin"


class NetnsError(RuntimeError):
    """A namespace, link or address could not be set up; the message names the command and its error."""


@dataclass(frozen=True)
class NodeNet:
    """One node's place on the network."""

    name: str  # the SLURM node name, resolvable inside every node's namespace
    ns: str  # network namespace
    veth: str  # root-side end of its cable (on the bridge)
    addr: str


@dataclass(frozen=True)
class ClusterNet:
    """The bridge and the nodes of one cluster directory."""

    id: str
    subnet: int
    nodes: tuple[NodeNet, ...]

    @classmethod
    def for_dir(cls, cluster_dir: Path, nodes: int) -> ClusterNet:
        digest = hashlib.sha1(str(cluster_dir).encode()).hexdigest()
        ident, subnet = digest[:6], int(digest[6:10], 16) % 250 + 2
        if nodes > 250:
            raise NetnsError(f"{nodes} nodes do not fit one /24 subnet")
        return cls(ident, subnet, tuple(
            NodeNet(f"pk{ident}n{i + 1}", f"pekd-{ident}-n{i + 1}", f"pk{ident}n{i + 1}", f"{PREFIX}.{subnet}.{i + 2}")
            for i in range(nodes)))

    @property
    def bridge(self) -> str:
        return f"pk{self.id}br"

    @property
    def gateway(self) -> str:
        """The bridge's address: the root namespace (slurmctld, sbatch) as the nodes see it."""
        return f"{PREFIX}.{self.subnet}.1"

    def node(self, name: str) -> NodeNet:
        return next(n for n in self.nodes if n.name == name)

    def create(self) -> None:
        """Build the bridge, namespaces, cables, addresses and hosts files (after removing any leftovers)."""
        self.destroy()
        taken = _ip("-o", "-4", "addr", "show").stdout
        if f" {self.gateway}/" in taken:
            raise NetnsError(f"{self.gateway} is already in use on this machine (another cluster's bridge?)")
        _ip("link", "add", self.bridge, "type", "bridge")
        _ip("addr", "add", f"{self.gateway}/24", "dev", self.bridge)
        _ip("link", "set", self.bridge, "up")
        hosts = "".join(f"{n.addr} {n.name}\n" for n in self.nodes)
        base = Path("/etc/hosts").read_text() if Path("/etc/hosts").exists() else ""
        for node in self.nodes:
            _ip("netns", "add", node.ns)
            _ip("link", "add", node.veth, "type", "veth", "peer", "name", "eth0", "netns", node.ns)
            _ip("link", "set", node.veth, "master", self.bridge)
            _ip("link", "set", node.veth, "up")
            _ip("-n", node.ns, "addr", "add", f"{node.addr}/24", "dev", "eth0")
            _ip("-n", node.ns, "link", "set", "eth0", "up")
            _ip("-n", node.ns, "link", "set", "lo", "up")
            etc = NETNS_ETC / node.ns
            etc.mkdir(parents=True, exist_ok=True)
            own = f"{node.addr} {socket.gethostname()}\n"
            (etc / "hosts").write_text(own + hosts + _without_host_name(base))

    def destroy(self) -> None:
        """Remove the namespaces (their veths go with them), the bridge and the hosts files; missing ones are fine.

        A namespace outlives `ip netns del` while a process still runs in it: stop the daemons and jobs first.
        """
        for node in self.nodes:
            _ip("netns", "del", node.ns, check=False)
            _ip("link", "del", node.veth, check=False)
            shutil.rmtree(NETNS_ETC / node.ns, ignore_errors=True)
        _ip("link", "del", self.bridge, check=False)

    def exists(self) -> list[str]:
        """What of this network is there now (namespaces, links, hosts folders), for checks after a stop."""
        found = [n.ns for n in self.nodes if n.ns in _ip("netns", "list").stdout.split()]
        links = _ip("-o", "link", "show").stdout
        found += [name for name in (self.bridge, *(n.veth for n in self.nodes)) if f" {name}:" in links
                  or f" {name}@" in links]
        return found + [str(NETNS_ETC / n.ns) for n in self.nodes if (NETNS_ETC / n.ns).exists()]

    def exec_prefix(self, node_name: str) -> list[str]:
        """The command prefix that runs a program inside a node's network namespace, with the node's hosts file.

        Not `ip netns exec`, which does the same but also mounts a fresh /sys, without the cgroup hierarchies
        under /sys/fs/cgroup that slurmd refuses to start without.
        """
        node = self.node(node_name)
        tools = [shutil.which(t, path=SBIN) for t in ("nsenter", "unshare")]
        if None in tools:
            raise NetnsError("nsenter/unshare not found: install Debian's util-linux")
        return [tools[0], f"--net=/run/netns/{node.ns}", "--", tools[1], "--mount", "--propagation", "private", "--",
                "sh", "-c", 'mount --bind "$0" /etc/hosts && exec "$@"', str(NETNS_ETC / node.ns / "hosts")]


def _without_host_name(hosts: str) -> str:
    """The machine's hosts file minus the lines naming its host name (each node maps that name to itself)."""
    me = socket.gethostname()
    return "".join(line + "\n" for line in hosts.splitlines() if me not in line.split("#", 1)[0].split()[1:])


def _ip_binary() -> str:
    found = shutil.which("ip") or shutil.which("ip", path=SBIN)
    if found is None:
        raise NetnsError("ip (iproute2) not found: install Debian's iproute2")
    return found


def _ip(*args: str, check: bool = True) -> subprocess.CompletedProcess[str]:
    proc = subprocess.run([_ip_binary(), *args], capture_output=True, text=True, timeout=30)
    if check and proc.returncode != 0:
        raise NetnsError(f"ip {' '.join(args)} failed: {proc.stderr.strip()} (network namespaces need root)")
    return proc
