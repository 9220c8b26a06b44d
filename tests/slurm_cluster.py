"""A real, private SLURM cluster for the tests: munged, slurmctld and two slurmd on this machine.

Debian's `slurmctld slurmd slurm-client munge` packages provide the daemons (.ci/run installs them). The
cluster lives in a temp dir: its own munge key and socket, a private slurm.conf (SLURM_CONF points the
client tools at it), state/spool/pid/log files and free ports, so it never touches a system SLURM. Two
nodes, n1 and n2, run as `slurmd -N n1` / `slurmd -N n2` on distinct ports; both are this machine
(NodeAddr 127.0.0.1). Partitions: `debug` (both nodes, default) and `solo` (n1 only, for a run that waits
for resources). Every daemon is stopped by its pid file at teardown.

Without the binaries the SLURM tests skip with a message, except where the environment sets CI or
CLIPLAB_REQUIRE_SLURM (.ci/run does): then they fail.
"""

from __future__ import annotations

import os
import shutil
import signal
import socket
import subprocess
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Iterator

import pytest

BINARIES = ("munged", "mungekey", "slurmctld", "slurmd", "sbatch", "squeue", "sacct", "scancel", "sinfo")
NODES = ("n1", "n2")
CPUS_PER_NODE = 1  # two one-CPU nodes share this machine's cores


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def missing_binaries() -> list[str]:
    return [b for b in BINARIES if shutil.which(b) is None
            and not Path("/usr/sbin", b).is_file()]


def _which(name: str) -> str:
    return shutil.which(name) or str(Path("/usr/sbin", name))


@dataclass
class SlurmCluster:
    root: Path

    @property
    def conf(self) -> Path:
        return self.root / "slurm.conf"

    @property
    def env(self) -> dict[str, str]:
        """What a process calling sbatch/squeue/... needs: the private slurm.conf (which names the socket)."""
        return {"SLURM_CONF": str(self.conf)}

    def client_env(self) -> dict[str, str]:
        env = {k: v for k, v in os.environ.items() if not k.startswith("SLURM_")}
        return {**env, **self.env}

    def write_config(self) -> None:
        r = self.root
        for sub in ("state", "spool", "munge", "log"):
            (r / sub).mkdir(parents=True, exist_ok=True)
        hostname = socket.gethostname()
        nodes = "\n".join(
            f"NodeName={n} NodeHostname={hostname} NodeAddr=127.0.0.1 Port={_free_port()} CPUs={CPUS_PER_NODE} "
            "RealMemory=1000 State=UNKNOWN" for n in NODES)
        self.conf.write_text(f"""\
ClusterName=cliplabtest
SlurmctldHost={hostname}(127.0.0.1)
SlurmctldPort={_free_port()}
SlurmUser=root
SlurmdUser=root
AuthType=auth/munge
AuthInfo=socket={r / 'munge' / 'munge.socket'}
CredType=cred/munge
StateSaveLocation={r / 'state'}
SlurmdSpoolDir={r / 'spool'}/%n
SlurmctldPidFile={r / 'slurmctld.pid'}
SlurmdPidFile={r}/slurmd-%n.pid
SlurmctldLogFile={r / 'log' / 'slurmctld.log'}
SlurmdLogFile={r / 'log'}/slurmd-%n.log
ProctrackType=proctrack/linuxproc
TaskPlugin=task/none
JobCompType=jobcomp/filetxt
JobCompLoc={r / 'log' / 'jobcomp.txt'}
AccountingStorageType=accounting_storage/none
JobAcctGatherType=jobacct_gather/none
SchedulerType=sched/backfill
SelectType=select/cons_tres
SelectTypeParameters=CR_CPU
ReturnToService=2
MpiDefault=none
SwitchType=switch/none
MailProg=/bin/true
SlurmctldTimeout=30
SlurmdTimeout=60
InactiveLimit=0
KillWait=5
MinJobAge=300
SchedulerParameters=sched_interval=1
{nodes}
PartitionName=debug Nodes={','.join(NODES)} Default=YES MaxTime=INFINITE State=UP
PartitionName=solo Nodes={NODES[0]} MaxTime=INFINITE State=UP
""")

    def _run(self, *cmd: str) -> None:
        out = subprocess.run(list(cmd), env=self.client_env(), capture_output=True, text=True, timeout=30)
        if out.returncode != 0:
            raise RuntimeError(f"{' '.join(cmd)} failed ({out.returncode}): {out.stderr or out.stdout}\n{self.logs()}")

    def start(self, timeout: float = 30) -> "SlurmCluster":
        self.write_config()
        m = self.root / "munge"
        key = m / "munge.key"
        self._run(_which("mungekey"), "--create", "--keyfile", str(key))
        key.chmod(0o400)
        self._run(_which("munged"), "--force", f"--socket={m / 'munge.socket'}", f"--key-file={key}",
                  f"--pid-file={m / 'munged.pid'}", f"--log-file={m / 'munged.log'}", f"--seed-file={m / 'seed'}")
        self._run(_which("slurmctld"), "-i")
        for node in NODES:
            self._run(_which("slurmd"), "-N", node)
        self.wait_idle(timeout)
        return self

    def node_states(self) -> dict[str, str]:
        out = subprocess.run(["sinfo", "-N", "-h", "-o", "%N %t"], env=self.client_env(), capture_output=True,
                             text=True, timeout=10)
        return dict(line.split() for line in out.stdout.splitlines() if len(line.split()) == 2)

    def wait_idle(self, timeout: float) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            states = self.node_states()
            if len(states) == len(NODES) and all(s.rstrip("*") in ("idle", "mix", "alloc") for s in states.values()):
                return
            time.sleep(0.3)
        raise RuntimeError(f"SLURM nodes not idle after {timeout}s: {self.node_states()}\n{self.logs()}")

    def logs(self) -> str:
        parts = []
        for path in sorted((self.root / "log").glob("*.log")):
            text = path.read_text(errors="replace").splitlines()[-15:]
            parts.append(f"--- {path.name}\n" + "\n".join(text))
        return "\n".join(parts)

    def pid_files(self) -> list[Path]:
        return [*(self.root / f"slurmd-{n}.pid" for n in NODES), self.root / "slurmctld.pid",
                self.root / "munge" / "munged.pid"]

    def stop(self) -> None:
        """SIGTERM every daemon by its pid file (slurmd first: it ends the job steps it runs), then SIGKILL."""
        pids = []
        for path in self.pid_files():
            try:
                pid = int(path.read_text().split()[0])
                os.kill(pid, signal.SIGTERM)
                pids.append(pid)
            except (OSError, ValueError, IndexError):
                continue
        deadline = time.monotonic() + 10
        for pid in pids:
            while time.monotonic() < deadline and _alive(pid):
                time.sleep(0.1)
            if _alive(pid):
                os.kill(pid, signal.SIGKILL)


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    try:
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0] != "Z"
    except (OSError, IndexError):
        return True


@pytest.fixture(scope="session")
def slurm_cluster(tmp_path_factory: pytest.TempPathFactory) -> Iterator[SlurmCluster]:
    """A started two-node SLURM cluster for the whole session (skips without SLURM, fails so in CI)."""
    missing = missing_binaries()
    if missing:
        message = (f"SLURM binaries not installed: {', '.join(missing)} "
                   "(apt-get install slurmctld slurmd slurm-client munge)")
        if os.environ.get("CI") or os.environ.get("CLIPLAB_REQUIRE_SLURM"):
            pytest.fail(message + "; CI must run the SLURM tests")
        pytest.skip(message)
    # A short root: slurmd's and munged's socket paths must fit in sun_path (108 bytes).
    root = Path(tmp_path_factory.mktemp("slurm"))
    cluster = SlurmCluster(root)
    try:
        cluster.start()
    except Exception:
        cluster.stop()
        raise
    yield cluster
    cluster.stop()
