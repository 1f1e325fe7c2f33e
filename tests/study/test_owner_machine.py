"""A reaper re-queues a trial at once only when its owner ran on this very machine (hostname and boot id) and
left its lock free: two hosts that share one hostname must not take each other's live trials for dead."""

from __future__ import annotations

from pathlib import Path

import optuna

from ablation.study.queue import ownership


def _claimed(tmp_path: Path) -> tuple[optuna.Study, optuna.trial.FrozenTrial, ownership.FolderLock]:
    opt = optuna.create_study(study_name="own", storage=f"sqlite:///{tmp_path}/optuna.db")
    trial = opt.ask()
    lock = ownership.take(tmp_path / "trials" / "k-s0", trial.number)
    assert lock is not None
    opt._storage.set_trial_user_attr(trial._trial_id, ownership.OWNER_ATTR, ownership.owner_attr([lock]))
    return opt, opt.get_trials()[0], lock


def test_the_owner_record_names_this_boot_of_this_machine(tmp_path: Path) -> None:
    boot_id = Path("/proc/sys/kernel/random/boot_id").read_text().strip()
    _, trial, lock = _claimed(tmp_path)
    lock.release()
    owner = trial.user_attrs[ownership.OWNER_ATTR]
    assert owner["host"] == ownership.HOST and owner["machine"] == f"{ownership.HOST}/{boot_id}"


def test_a_free_lock_of_another_machine_with_this_hostname_is_not_a_dead_owner(tmp_path: Path) -> None:
    opt, trial, lock = _claimed(tmp_path)
    assert not ownership.owner_gone(trial)  # held: alive
    lock.release()
    assert ownership.owner_gone(opt.get_trials()[0])  # this machine, lock free: its process is gone
    # the same hostname on another machine (or this one before a reboot): its lock says nothing here
    other = {**trial.user_attrs[ownership.OWNER_ATTR], "machine": f"{ownership.HOST}/another-boot-id"}
    opt._storage.set_trial_user_attr(trial._trial_id, ownership.OWNER_ATTR, other)
    assert not ownership.owner_gone(opt.get_trials()[0])
    legacy = {key: value for key, value in other.items() if key != "machine"}  # written by an older ablate
    opt._storage.set_trial_user_attr(trial._trial_id, ownership.OWNER_ATTR, legacy)
    assert not ownership.owner_gone(opt.get_trials()[0])
