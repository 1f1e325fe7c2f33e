"""The init phase, computed once per identity and seed, continued by every trial that shares it.

The init phase (content-only pre-training of G) reads only what `init_identity` lists: G's architecture, the
backbone, the data, the batch size, the init schedule and logging, the init optimiser (lr, betas), the content
weight, the smooth target (which images the streams serve), the runtime and the seed. Trials that agree on
these (every level of a loss-weight axis, say) run identical init phases, seed by seed. One of them computes it
and stores its end state; the others start from that state at the first GAN step.

An entry holds everything the trial holds at that step that the init phase changed and a later step reads: G's
weights, the data stream positions, the metric window, the rows it logged and the sample frames it wrote (not the
init optimiser's moments: nothing steps it after the init phase, and they were two thirds of an entry). D and
the penalty/dropout RNG are not in it: each trial draws them from its own seed (D after G, so D's init does not
depend on the init phase), and the init phase draws nothing from that RNG, which the leader checks before it
stores an entry. On CPU a trial continued from an entry therefore equals the same trial run
from scratch, bit for bit (tests/gan/test_init_cache.py).

Entries live under the trials directory (`<trials_dir>/_init/`), so workers on other hosts share them through
the shared volume. Each is a `.pt` file and a `.json` written after it with its identity and SHA-256: a
missing, partial or corrupt entry, or one of another identity, is recomputed, never trusted.
"""

from __future__ import annotations

import fcntl
import functools
import hashlib
import io
import json
import os
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch

from ablation.config import TrainConfig, get_path
from ablation.errors import UserError
from ablation.files import atomic_write, atomic_write_text, remove_stale_temps
from ablation.gan.device import effective_precision, resolve_device

if TYPE_CHECKING:
    from ablation.gan.member import Member

FORMAT = 1
# The init step's code version: bump it when a change to the init phase's code changes what it computes, so
# entries stored by older code are recomputed rather than continued.
INIT_CODE = 1
INIT_DIR = "_init"  # under the trials directory

# What the init phase reads (dotted config paths); everything else may differ between trials that share it.
INIT_FIELDS: tuple[str, ...] = (
    "model.generator", "model.generator_sn", "model.resize", "backbone", "data", "loss.content_weight",
    "loss.init_color_weight", "loss.smooth_target", "optim.init_lr", "optim.beta1", "optim.beta2",
    "schedule.batch_size", "schedule.init_epochs", "schedule.steps_per_epoch", "schedule.log_every",
    "schedule.balance_every", "runtime", "seed",
)
# read as well when an evaluation falls inside the init phase (its metrics are among the rows it logs)
INIT_EVAL_FIELDS: tuple[str, ...] = ("eval", "schedule.eval_every")



def evaluates_in_init(config: TrainConfig) -> bool:
    every = config.schedule.eval_every
    return config.eval.enabled and every > 0 and every <= config.schedule.init_epochs


def shareable(config: TrainConfig) -> bool:
    """A GAN phase follows the init phase: only then is there anything to continue from its end state."""
    return 0 < config.schedule.init_epochs < config.schedule.epochs


def init_identity(config: TrainConfig) -> dict[str, Any]:
    """The values of every field the init phase reads, and what those fields only point at: the device type and
    precision `runtime` resolves to here (an fp32 CPU entry is not a bf16 GPU worker's), the torch and init-code
    versions, and the content of the data folder and of a local backbone weights file rather than their paths."""
    dump = config.model_dump(mode="json")
    fields = INIT_FIELDS + (INIT_EVAL_FIELDS if evaluates_in_init(config) else ())
    try:
        device = resolve_device(config.runtime)
        resolved = {"device": device.type, "precision": effective_precision(config.runtime, device)}
    except UserError:  # a CUDA config keyed on a host without CUDA (planning, ETA): it can run nothing here
        resolved = {"device": config.runtime.device, "precision": "unresolved"}
    weights = config.backbone.weights
    return {"format": FORMAT, **{path: get_path(dump, path) for path in fields}, **{
        "resolved": {**resolved, "torch": torch.__version__, "init_code": INIT_CODE},
        "content": {"data.root": tree_digest(config.data.root),
                    "backbone.weights": weights if weights in ("imagenet", "random") else file_digest(Path(weights))}}}


def tree_digest(root: Path) -> str:
    """SHA-256 of a folder's file list with each file's size: a dataset edited in place changes it, and a
    listing costs milliseconds where hashing every image would cost minutes. 'missing' for no folder."""
    if not root.is_dir():
        return "missing"
    listing = sorted(f"{path.relative_to(root).as_posix()}\t{path.stat().st_size}" for path in root.rglob("*")
                     if path.is_file())
    return hashlib.sha256("\n".join(listing).encode()).hexdigest()


def file_digest(path: Path) -> str:
    """SHA-256 of a file's bytes ('missing' for none), cached by path, size and mtime: a weights file is hashed
    once per process, not at every look-up of the key."""
    if not path.is_file():
        return "missing"
    stat = path.stat()
    return _file_sha256(str(path.resolve()), stat.st_size, stat.st_mtime_ns)


@functools.lru_cache(maxsize=16)
def _file_sha256(path: str, size: int, mtime_ns: int) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def init_key(config: TrainConfig) -> str:
    """Equal for two configs iff their init phases are identical: a hash of `init_identity`."""
    payload = json.dumps(init_identity(config), sort_keys=True, separators=(",", ":"))
    return hashlib.sha256(payload.encode()).hexdigest()[:16]


@dataclass
class InitEntry:
    """The end state of one init phase (see the module doc)."""

    step: int
    generator: dict[str, torch.Tensor]
    streams: dict[str, Any]
    window: dict[str, Any]
    rows: list[tuple[int, dict[str, float]]]  # what it logged, in order
    frames: dict[str, bytes]  # sample frame file name -> PNG bytes
    seconds: float  # the init phase's own compute time: what each trial that continues it saves


def _paths(root: Path, key: str) -> tuple[Path, Path]:
    return root / f"{key}.pt", root / f"{key}.json"


def save_entry(root: Path, config: TrainConfig, entry: InitEntry) -> None:
    """State first, then the JSON that vouches for it: a reader never trusts a state without its checksum."""
    root.mkdir(parents=True, exist_ok=True)
    key = init_key(config)
    state_path, meta_path = _paths(root, key)
    buffer = io.BytesIO()
    torch.save(entry.__dict__, buffer)
    data = buffer.getvalue()
    atomic_write(state_path, lambda handle: handle.write(data))
    atomic_write_text(meta_path, json.dumps({"identity": init_identity(config), "sha256": hashlib.sha256(data)
                                             .hexdigest(), "seconds": entry.seconds}, sort_keys=True))


def load_entry(root: Path, config: TrainConfig) -> InitEntry | None:
    """The entry for this config's init phase, or None when there is none or it cannot be trusted."""
    state_path, meta_path = _paths(root, init_key(config))
    # a leader killed while storing this entry left its temp files; old enough, no live leader is writing them
    for path in (state_path, meta_path):
        remove_stale_temps(path)
    if not meta_path.exists():
        return None
    try:
        meta = json.loads(meta_path.read_text())
        data = state_path.read_bytes()
        if meta["identity"] != init_identity(config) or hashlib.sha256(data).hexdigest() != meta["sha256"]:
            raise ValueError("identity or checksum mismatch")
        # restricted unpickler: an entry that would run code is refused like a corrupt one (and recomputed)
        state = torch.load(io.BytesIO(data), map_location="cpu", weights_only=True)
        state.pop("opt_init", None)  # entries stored before the init optimiser was left out of them
        return InitEntry(**state)
    except Exception as exc:  # noqa: BLE001 - any unreadable entry is recomputed, whatever broke it
        print(f"ablate: init cache entry {meta_path.name} unusable ({type(exc).__name__}: {exc}); recomputing it",
              file=sys.stderr)
        return None


REMOTE_POLL_S = 1.0  # how often members waiting for another process's init phase look for its entry


def _take_lead(root: Path, key: str) -> int | None:
    """An exclusive flock on `<key>.lead` beside the entries: who computes this init phase now, across the
    processes (and, on a file system with working flock, the hosts) that share the folder. None while another
    process holds it; the kernel drops it when its holder dies, so a dead leader never blocks anyone."""
    root.mkdir(parents=True, exist_ok=True)
    fd = os.open(root / f"{key}.lead", os.O_RDWR | os.O_CREAT, 0o666)  # never deleted: see study.queue.ownership
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        os.close(fd)
        return None
    return fd


class InitSharing:
    """Within one array, and across arrays, workers and hosts: the first member of an init identity computes
    the init phase (the leader, holding `<key>.lead`); later ones with the same identity wait, not stepped,
    until the leader stores its entry, then continue from it. A leader in another process is waited for the
    same way (`poll`), so two workers that start the same init phase at once compute it once. A leader that
    leaves during its init phase (diverged, pruned, stopped, dead) hands the lead to the next waiting member."""

    def __init__(self, root: Path) -> None:
        self.root = root
        self.leaders: dict[str, Member] = {}
        self.waiting: dict[str, list[Member]] = {}
        self.remote: dict[str, list[Member]] = {}  # waiting for a leader in another process
        self.lead_fds: dict[str, int] = {}
        self.next_poll = 0.0
        self.rng_at_start: dict[int, list[torch.Tensor]] = {}

    def admit(self, member: Member) -> bool:
        """True when the member steps now (it leads, continues from an entry, or shares nothing)."""
        if member.step != 0 or not shareable(member.config):
            return True
        key = init_key(member.config)
        if key in self.leaders or key in self.remote:
            (self.waiting if key in self.leaders else self.remote).setdefault(key, []).append(member)
            return False
        if (entry := load_entry(self.root, member.config)) is not None:
            member.continue_init(entry)
            return True
        fd = _take_lead(self.root, key)
        if fd is None:  # another process computes it right now: wait for its entry rather than compute it twice
            self.remote[key] = [member]
            return False
        if (entry := load_entry(self.root, member.config)) is not None:  # stored between our look and our lock
            os.close(fd)
            member.continue_init(entry)
            return True
        self.lead_fds[key] = fd
        self._lead(key, member)
        return True

    def poll(self) -> list[Member]:
        """Members that waited for another process's init phase and step now (at most every REMOTE_POLL_S): its
        entry is stored, and they continue from it; or its lead is free (that process left or died first), and
        the first of them leads while the others wait for it here."""
        if not self.remote or time.monotonic() < self.next_poll:
            return []
        self.next_poll = time.monotonic() + REMOTE_POLL_S
        woken: list[Member] = []
        for key, members in list(self.remote.items()):
            entry = load_entry(self.root, members[0].config)
            fd = _take_lead(self.root, key) if entry is None else None
            if entry is None and fd is None:
                continue  # still being computed
            del self.remote[key]
            if entry is None and (entry := load_entry(self.root, members[0].config)) is None:
                self.lead_fds[key] = fd  # type: ignore[assignment]  # taken just above
                self._lead(key, members[0])
                self.waiting[key] = members[1:]
                woken.append(members[0])
                continue
            if fd is not None:
                os.close(fd)
            for member in members:
                member.continue_init(entry)
            woken.extend(members)
        return woken

    def remote_waiting(self) -> bool:
        return bool(self.remote)

    def _release(self, key: str) -> None:
        if (fd := self.lead_fds.pop(key, None)) is not None:
            os.close(fd)  # closing the only descriptor drops the flock

    def _lead(self, key: str, member: Member) -> None:
        self.leaders[key] = member
        self.rng_at_start[id(member)] = member.rng_states()

    def init_done(self, member: Member) -> list[Member]:
        """After each step of a member still in the array: a leader that just ended its init phase stores its
        entry; the members waiting for it continue from it and are returned, to step from now on."""
        # called after every step of every member: the cheap test first, the key (a config hash) only at the end
        if member.step != member.init_steps or not shareable(member.config):
            return []
        key = init_key(member.config)
        if self.leaders.get(key) is not member:
            return []
        del self.leaders[key]
        waiting = self.waiting.pop(key, [])
        drew = [bool((a != b).any()) for a, b in zip(self.rng_at_start.pop(id(member)), member.rng_states(),
                                                     strict=True)]
        if any(drew):  # its init phase drew from the trial RNG: an entry would not be exact; each computes its own
            print(f"ablate: init phase of {member.out_dir} drew random numbers; not shared", file=sys.stderr)
            self._release(key)
            return waiting
        save_entry(self.root, member.config, member.init_entry())
        self._release(key)  # after the entry is stored: a process that then takes the lead finds it
        entry = load_entry(self.root, member.config)  # what every other trial will read: the same path here
        for follower in waiting:
            if entry is not None:
                follower.continue_init(entry)
        return waiting

    def left(self, member: Member) -> list[Member]:
        """A member left the array: if it led an unfinished init phase, the next waiting member leads now
        (returned, to step from its first step); members still waiting when the array stops are returned too."""
        for group in (self.waiting, self.remote):  # a waiting member that leaves (stopped) waits no more
            for key, members in list(group.items()):
                if any(m is member for m in members):
                    group[key] = [m for m in members if m is not member]
                    if not group[key]:
                        del group[key]
        if not any(leader is member for leader in self.leaders.values()):
            return []
        key = init_key(member.config)
        del self.leaders[key]
        self.rng_at_start.pop(id(member), None)
        waiting = self.waiting.pop(key, [])
        if not waiting:
            self._release(key)  # another process's waiting members may lead now
            return []
        self._lead(key, waiting[0])  # this process keeps the lock
        self.waiting[key] = waiting[1:]
        return [waiting[0]]

    def all_waiting(self) -> list[Member]:
        return [m for group in (self.waiting, self.remote) for members in group.values() for m in members]
