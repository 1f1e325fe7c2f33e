"""The shared init phase (gan/init_cache.py): the key's rule field by field; a trial continued from a stored
init phase equals the same trial from scratch, bit for bit (CPU fp32), alone and in an array; an array computes
each init identity once; a corrupt entry is recomputed; a leader that leaves early hands over."""

from __future__ import annotations

import hashlib
from pathlib import Path

import pytest
import torch
from test_array import GRID, Recorder, StubEvaluator, assert_same_losses, joined, run_alone, tiny, tiny_domains

from ablation.config import TrainConfig, with_overrides
from ablation.data.streams import Domains
from ablation.gan import array as array_module
from ablation.gan import init_cache
from ablation.gan.array import train_array
from ablation.gan.init_cache import INIT_FIELDS, InitEntry, init_identity, init_key, load_entry, save_entry
from ablation.outcomes import Outcome

# Fields the init phase never reads: trials that differ only in these share it. A config field in neither this
# list nor INIT_FIELDS fails the completeness test below, so a new field must be classified.
NOT_READ = ("model.d_ch", "model.d_layers", "model.d_sn", "model.d_dropout", "loss.gan_type", "loss.g_adv_weight",
            "loss.d_adv_weight", "loss.style_weight", "loss.color_weight", "loss.tv_weight", "loss.gp_weight",
            "loss.d_weights", "loss.style_target", "loss.color_scale", "loss.color_count", "optim.g_lr",
            "optim.d_lr", "optim.g_steps_per_d", "schedule.epochs",
            # the cycle objectives' extra networks are drawn after G and D: their init phase is animegan's
            "model.objective", "model.discriminator", "loss.cycle_weight", "loss.identity_weight", "optim.lr_decay",
            "optim.pool_size",
            "schedule.eval_every", "eval")  # these two only when no evaluation falls in the init phase
READ_CHANGES = {  # one change per field the init phase reads
    "model.generator": "v2", "model.generator_sn": True, "model.resize": "half_pixel", "backbone.arch":
    "mobilenet_v2", "backbone.seed": 7, "backbone.width": 1.0, "backbone.preprocess": "signed",
    "data.root": "elsewhere", "data.style": "Paprika", "data.image_size": 64, "data.val_count": 3,
    "loss.content_weight": 2.0, "loss.init_color_weight": 5.0,
    "loss.smooth_target": "color", "optim.init_lr": 1e-3, "optim.beta1": 0.9,
    "optim.beta2": 0.99, "schedule.batch_size": 4, "schedule.init_epochs": 2, "schedule.steps_per_epoch": 5,
    "schedule.log_every": 3, "runtime.amp": False, "runtime.threads": 1, "seed": 3,
}
NOT_READ_CHANGES = {
    "model.d_ch": 16, "model.d_layers": 2, "model.d_sn": False, "model.d_dropout": 0.1, "loss.gan_type": "hinge",
    "loss.style_weight": 10.0, "loss.color_weight": 3.0, "loss.style_target": "color", "loss.d_weights.fake": 2.5,
    "optim.g_lr": 2e-4, "optim.d_lr": 3e-4, "optim.g_steps_per_d": 2, "schedule.epochs": 9,
    "schedule.eval_every": 3, "eval.max_images": 8, "model.objective": "animegan+cycle",
    "model.discriminator": "patchgan", "loss.cycle_weight": 3.0, "loss.identity_weight": 1.0,
    "optim.lr_decay": "linear",
}


SHORT_STEPS = 8  # one init epoch and one GAN epoch of 4 steps: the exactness tests need both phases, not more


def short(**overrides: object) -> TrainConfig:
    return tiny(**{"schedule.epochs": 2, **overrides})


@pytest.fixture(scope="module")
def domains() -> Domains:
    return tiny_domains()


def _leaf_paths(value: object, path: str = "") -> list[str]:
    if not isinstance(value, dict):
        return [path]
    return [leaf for key, item in value.items() for leaf in _leaf_paths(item, f"{path}.{key}" if path else key)]


def _under(path: str, prefixes: tuple[str, ...]) -> bool:
    return any(path == p or path.startswith(p + ".") for p in prefixes)


def test_every_config_field_is_either_read_by_the_init_phase_or_not() -> None:
    for path in _leaf_paths(TrainConfig().model_dump(mode="json")):
        assert _under(path, INIT_FIELDS) != _under(path, NOT_READ), f"{path}: classify it (read or not read)"


def test_the_key_changes_with_every_field_the_init_phase_reads_and_with_no_other() -> None:
    base = tiny()
    for path, value in READ_CHANGES.items():
        assert init_key(with_overrides(base, {path: value})) != init_key(base), path
    for path, value in NOT_READ_CHANGES.items():
        assert init_key(with_overrides(base, {path: value})) == init_key(base), path
    # an evaluation inside the init phase logs its metrics among the init rows: then `eval` is read too
    evaluated = tiny(**{"eval.enabled": True, "schedule.eval_every": 1})
    assert init_key(with_overrides(evaluated, {"eval.max_images": 8})) != init_key(evaluated)


def test_a_trial_continued_from_a_stored_init_phase_equals_its_run_from_scratch(
        tmp_path: Path, domains: Domains) -> None:
    cache = tmp_path / "cache"
    # GRID[2] (seed 0, other gan type, weights, D schedule, betas 0.3...) differs in beta1: not shareable with
    # GRID[0]; a config with GRID[0]'s init identity but another GAN phase is
    donor = short(**{"loss.gan_type": "hinge", "loss.style_weight": 10.0, "model.d_ch": 16, "optim.g_lr": 2e-4})
    train_array(joined([donor], [tmp_path / "donor"], [Recorder()]), domains=domains, init_cache=cache)
    assert len(list(cache.glob("*.pt"))) == 1
    log = Recorder()
    result = train_array(joined([short(**GRID[0])], [tmp_path / "continued"], [log]), domains=domains,
                         init_cache=cache)[0]
    assert result.status is Outcome.FINISHED and result.init_reused_s is not None and result.init_reused_s > 0
    assert_same_losses(log.losses, run_alone(short(**GRID[0]), tmp_path / "scratch", domains), rel=0.0)
    frames = sorted(p.name for p in (tmp_path / "continued" / "samples").glob("epoch_*.png"))
    assert frames == [f"epoch_{e:04d}.png" for e in range(1, 3)]  # the init epoch's frame came with the state


def test_an_array_computes_each_init_phase_once(tmp_path: Path, domains: Domains,
                                                monkeypatch: pytest.MonkeyPatch) -> None:
    generator_calls = {"init": 0}
    real_init_step = array_module.init_step

    def counted(fused: object, group: list, *args: object) -> object:
        generator_calls["init"] += len(group)  # member-steps of the init phase actually computed
        return real_init_step(fused, group, *args)  # type: ignore[arg-type]

    monkeypatch.setattr(array_module, "init_step", counted)
    configs = [short(), short(**{"loss.style_weight": 10.0}), short(**{"seed": 1}),
               short(**{"loss.gan_type": "hinge", "seed": 1})]
    logs = [Recorder() for _ in configs]
    results = train_array(joined(configs, [tmp_path / str(i) for i in range(4)], logs), domains=domains,
                          init_cache=tmp_path / "cache")
    assert [r.status for r in results] == [Outcome.FINISHED] * 4
    assert generator_calls["init"] == 2 * 4  # two identities (seeds 0 and 1), 4 init steps each
    assert [r.init_reused_s is not None for r in results] == [False, True, False, True]
    monkeypatch.setattr(array_module, "init_step", real_init_step)
    for i in (1, 3):  # the followers: bit for bit their own runs
        assert_same_losses(logs[i].losses, run_alone(configs[i], tmp_path / f"alone{i}", domains), rel=0.0)


def test_a_corrupt_entry_is_recomputed_not_trusted(tmp_path: Path, domains: Domains,
                                                   capsys: pytest.CaptureFixture[str]) -> None:
    cache = tmp_path / "cache"
    train_array(joined([short()], [tmp_path / "a"], [Recorder()]), domains=domains, init_cache=cache)
    state = next(cache.glob("*.pt"))
    data = bytearray(state.read_bytes())
    data[len(data) // 2] ^= 0xFF
    state.write_bytes(bytes(data))
    log = Recorder()
    result = train_array(joined([short(**{"loss.style_weight": 6.0})], [tmp_path / "b"], [log]), domains=domains,
                         init_cache=cache)[0]
    assert "unusable (ValueError: identity or checksum mismatch); recomputing it" in capsys.readouterr().err
    assert result.init_reused_s is None  # computed its own init phase, and stored a good entry again
    assert_same_losses(log.losses, run_alone(short(**{"loss.style_weight": 6.0}), tmp_path / "alone", domains),
                       rel=0.0)
    assert train_array(joined([short(**{"loss.style_weight": 7.0})], [tmp_path / "c"], [Recorder()]), domains=domains,
                       init_cache=cache)[0].init_reused_s is not None


def test_a_leader_that_leaves_in_its_init_phase_hands_the_lead_over(tmp_path: Path, domains: Domains) -> None:
    # both evaluate at the end of each epoch (in the init phase too, so eval is part of the identity: equal here);
    # the leader is pruned at its first evaluation (step 4, before its entry is stored): the follower computes
    leader = short(**{"schedule.eval_every": 1})
    follower = short(**{"schedule.eval_every": 1, "loss.style_weight": 10.0})
    logs = [Recorder(), Recorder()]
    results = train_array(joined([leader, follower], [tmp_path / "l", tmp_path / "f"], logs, on_eval=[lambda metrics,
                                                                                                      step: True,
                                                                                                      None]),
                          domains=domains, evaluator=StubEvaluator(), init_cache=tmp_path / "cache")
    assert (results[0].status, results[0].step) == (Outcome.PRUNED, 4)
    assert (results[1].status, results[1].step, results[1].init_reused_s) == (Outcome.FINISHED, SHORT_STEPS, None)
    want = Recorder()
    train_array(joined([follower], [tmp_path / "alone"], [want]), domains=domains, evaluator=StubEvaluator())
    assert_same_losses(logs[1].losses, want.losses, rel=0.0)


def test_an_entry_of_another_precision_or_data_content_is_not_continued(tmp_path: Path,
                                                                       monkeypatch: pytest.MonkeyPatch) -> None:
    """An fp32 CPU worker and a bf16 GPU worker share the trials volume: neither continues the other's entry."""
    config = short()
    entry = InitEntry(step=4, generator={"w": torch.ones(2)}, streams={}, window={}, rows=[(1, {"loss": 1.0})],
                      frames={}, seconds=1.5)
    with monkeypatch.context() as gpu:  # as a bf16 CUDA worker keys and stores it (its runtime.amp is on)
        gpu.setattr(init_cache, "resolve_device", lambda runtime: torch.device("cuda"), raising=False)
        gpu.setattr(init_cache, "effective_precision", lambda runtime, device: "bf16", raising=False)
        save_entry(tmp_path, config, entry)
        assert load_entry(tmp_path, config) is not None
    assert load_entry(tmp_path, config) is None  # here: CPU fp32, another key; the trial computes its own
    assert init_identity(config)["resolved"] == {"device": "cpu", "precision": "fp32", "torch": torch.__version__,
                                                 "init_code": init_cache.INIT_CODE}
    # the data folder's content, not only its path: a file edited in place changes the key
    data = tmp_path / "data"
    (data / "train_photo").mkdir(parents=True)
    (data / "train_photo" / "a.jpg").write_bytes(b"12345")
    on_data = with_overrides(config, {"data.root": str(data)})
    before = init_key(on_data)
    (data / "train_photo" / "a.jpg").write_bytes(b"123456")
    assert init_key(on_data) != before
    # a local weights file: by its bytes
    weights = tmp_path / "vgg.pth"
    weights.write_bytes(b"weights-1")
    local = with_overrides(config, {"backbone.weights": str(weights)})
    first = init_key(local)
    weights.write_bytes(b"weights-2")
    assert init_key(local) != first and init_identity(local)["content"]["backbone.weights"] == \
        hashlib.sha256(b"weights-2").hexdigest()
