"""A real single-node Slurm cluster for tests: munged, slurmctld and slurmd from Debian's packages.

Everything lives in a fresh folder under the system temp dir (munged, which runs as the `munge` user, must be able
to reach it; pytest's 0700 tmp_path is not reachable when the tests run as root): a generated munge key and a
munged on its own socket, a generated `slurm.conf` on free ports, the daemons' state, spool, logs and pid files.
Nothing of the host's Slurm or munge configuration is used or touched, so a site daemon on the same machine and
this one do not meet. Commands reach this cluster through `SLURM_CONF` (`env`).

No cgroups (containers and CI machines often lack a writable cgroup tree): `proctrack/linuxproc` follows a job's
processes by parentage and `task/none` binds nothing; no accounting daemon (`sacct` is not used).
"""

from __future__ import annotations

import contextlib
import os
import pwd
import shutil
import socket
import subprocess
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import IO

from services import free_port, log_tail

# the packages that hold the binaries below (Debian 12): what a skip tells the reader to install
PACKAGES = "slurmctld slurmd slurm-client munge"
SBIN = (Path("/usr/sbin"), Path("/usr/bin"))
DAEMONS = ("munged", "slurmctld", "slurmd")
CLIENTS = ("sbatch", "scontrol", "squeue", "sinfo", "scancel")


def find_binary(name: str) -> str | None:
    """A binary on PATH, else in /usr/sbin (daemons live there, and a non-login root shell may lack it on PATH)."""
    found = shutil.which(name)
    if found:
        return found
    return next((str(d / name) for d in SBIN if (d / name).is_file()), None)


def missing_binaries() -> list[str]:
    return [name for name in (*DAEMONS, *CLIENTS) if find_binary(name) is None]


def short_hostname() -> str:
    return socket.gethostname().split(".")[0]


class SlurmCluster:
    """One node (this host as `NodeName=<short hostname>`, 127.0.0.1), one partition `debug`, `cpus` CPUs.

    `start()` returns once the node is idle; `stop()` cancels what is left and stops the daemons by pid."""

    def __init__(self, cpus: int = 2, base_dir: Path | None = None) -> None:
        self.cpus = cpus
        self.node = short_hostname()
        self.base = Path(base_dir) if base_dir else Path(tempfile.mkdtemp(prefix="ablate-slurm-"))
        self.base.chmod(0o755)  # munged (user munge) reaches its own folder through this one
        self.munge_dir = self.base / "munge"
        self.conf = self.base / "slurm.conf"
        self.env = {**os.environ, "SLURM_CONF": str(self.conf)}
        self._procs: dict[str, subprocess.Popen[bytes]] = {}
        self._logs: list[IO[bytes]] = []

    # -- configuration -----------------------------------------------------------------------------------------
    def _write_munge_key(self) -> pwd.struct_passwd:
        munge = pwd.getpwnam("munge")  # the munge package creates this user
        self.munge_dir.mkdir()
        self.munge_dir.chmod(0o755)  # munged refuses a socket folder that not everyone can traverse
        key = self.munge_dir / "munge.key"
        key.write_bytes(os.urandom(1024))  # our own key: credentials of any other munged do not verify here
        key.chmod(0o400)
        for path in (self.munge_dir, key):
            os.chown(path, munge.pw_uid, munge.pw_gid)
        return munge

    def slurm_conf(self, ctld_port: int, slurmd_port: int) -> str:
        b = self.base
        lines = [
            "ClusterName=ablatetest",
            f"SlurmctldHost={self.node}(127.0.0.1)",
            f"SlurmctldPort={ctld_port}",
            f"SlurmdPort={slurmd_port}",
            "SlurmUser=root",
            "SlurmdUser=root",
            "AuthType=auth/munge",
            "CredType=cred/munge",
            f"AuthInfo=socket={self.munge_dir / 'munge.socket'}",
            f"StateSaveLocation={b / 'state'}",
            f"SlurmdSpoolDir={b / 'spool'}",
            f"SlurmctldLogFile={b / 'slurmctld.log'}",
            f"SlurmdLogFile={b / 'slurmd.log'}",
            f"SlurmctldPidFile={b / 'slurmctld.pid'}",
            f"SlurmdPidFile={b / 'slurmd.pid'}",
            "ProctrackType=proctrack/linuxproc",
            "TaskPlugin=task/none",
            "AccountingStorageType=accounting_storage/none",
            "JobAcctGatherType=jobacct_gather/none",
            "JobCompType=jobcomp/none",
            "SchedulerType=sched/backfill",
            "SelectType=select/cons_tres",
            "SelectTypeParameters=CR_CPU",  # CPUs only: no memory to configure or to run out of
            "SlurmdParameters=config_overrides",  # the configured CPUs count, whatever the host has
            "ReturnToService=2",
            "MpiDefault=none",
            "MailProg=/bin/true",
            "MinJobAge=3600",  # finished jobs stay visible to `scontrol show job` for the assertions
            "SlurmctldDebug=info",
            "SlurmdDebug=info",
            f"NodeName={self.node} NodeAddr=127.0.0.1 CPUs={self.cpus} State=UNKNOWN",
            "PartitionName=debug Nodes=ALL Default=YES MaxTime=INFINITE State=UP",
        ]
        return "\n".join(lines) + "\n"

    # -- processes ---------------------------------------------------------------------------------------------
    def _spawn(self, name: str, args: list[str], user: str | None = None) -> None:
        log = (self.base / f"{name}.stdout").open("wb")
        self._logs.append(log)
        # Popen(user=...) rather than runuser: the pid kept is the daemon's own, so stop() signals the daemon
        self._procs[name] = subprocess.Popen(args, stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                                             env=self.env, cwd=self.base, user=user,
                                             extra_groups=[] if user else None, start_new_session=True)

    def start(self, timeout: float = 60.0) -> None:
        """munged, slurmctld, slurmd; returns once `sinfo` shows the node idle."""
        missing = missing_binaries()
        if missing:
            raise RuntimeError(f"Slurm binaries missing: {', '.join(missing)} (apt-get install {PACKAGES})")
        if os.geteuid() != 0:  # a failure, not a skip: a tier that quietly never runs tests nothing
            raise RuntimeError("the Slurm test cluster needs root: slurmd starts jobs, munged runs as `munge`")
        for folder in ("state", "spool"):
            (self.base / folder).mkdir()
        munge = self._write_munge_key()
        m = self.munge_dir
        self._spawn("munged", [find_binary("munged") or "munged", "--foreground", f"--socket={m / 'munge.socket'}",
                               f"--key-file={m / 'munge.key'}", f"--pid-file={m / 'munged.pid'}",
                               f"--log-file={m / 'munged.log'}", f"--seed-file={m / 'munged.seed'}"],
                    user=munge.pw_name)
        self._wait(lambda: (m / "munge.socket").exists(), 20, "munged's socket")
        self.conf.write_text(self.slurm_conf(free_port(), free_port()))
        self._spawn("slurmctld", [find_binary("slurmctld") or "slurmctld", "-D", "-f", str(self.conf)])
        self._spawn("slurmd", [find_binary("slurmd") or "slurmd", "-D", "-N", self.node, "-f", str(self.conf)])
        self._wait(lambda: self.node_state() == "idle", timeout, "the node to be idle")

    def node_state(self) -> str:
        done = self.command("sinfo", "-h", "-N", "-o", "%T", check=False)
        return done.stdout.strip() if done.returncode == 0 else ""

    def _wait(self, ready: Callable[[], bool], timeout: float, what: str) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if ready():
                return
            if any(p.poll() is not None for p in self._procs.values()):  # a daemon died: its log says why
                break
            time.sleep(0.25)
        raise RuntimeError(f"Slurm test cluster: no {what} after {timeout:.0f}s\n{self.logs()}")

    def logs(self, lines: int = 25) -> str:
        parts = []
        for name in (f"{d}.stdout" for d in DAEMONS):  # -D: the slurm daemons copy their log files there
            parts.append(f"--- {name} ---\n{log_tail(self.base / name, lines)}")
        status = {n: p.poll() for n, p in self._procs.items()}
        return f"daemons (None = running): {status}\n" + "\n".join(parts)

    def command(self, *args: str, check: bool = True, timeout: float = 30) -> subprocess.CompletedProcess[str]:
        """A Slurm client command (scontrol, squeue, ...) against this cluster."""
        done = subprocess.run([find_binary(args[0]) or args[0], *args[1:]], env=self.env, capture_output=True,
                              text=True, timeout=timeout)
        if check and done.returncode != 0:
            raise RuntimeError(f"{' '.join(args)} failed (rc={done.returncode}): {done.stderr.strip()}")
        return done

    def stop(self) -> None:
        """Cancel every job (slurmstepd kills their processes), then stop slurmd, slurmctld, munged by pid."""
        if self._procs.get("slurmctld") is not None and self._procs["slurmctld"].poll() is None:
            with contextlib.suppress(subprocess.SubprocessError, OSError, RuntimeError):
                self.command("scancel", "--user", pwd.getpwuid(os.getuid()).pw_name, check=False)
                deadline = time.monotonic() + 30
                while time.monotonic() < deadline and self.command("squeue", "-h", check=False).stdout.strip():
                    time.sleep(0.5)
        for name in ("slurmd", "slurmctld", "munged"):
            proc = self._procs.pop(name, None)
            if proc is None:
                continue
            if proc.poll() is None:
                proc.terminate()
            try:
                proc.wait(timeout=20)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait(timeout=10)
        for log in self._logs:
            log.close()
        self._logs.clear()

    def close(self) -> None:
        try:
            self.stop()
        finally:
            shutil.rmtree(self.base, ignore_errors=True)
