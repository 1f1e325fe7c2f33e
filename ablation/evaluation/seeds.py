"""Evaluator seeds kept apart from training seeds (reference §4.2), with no torch import: study validation uses it.

Training seeds torch with the plain number (`torch.manual_seed(seed)` for the trial and for a random backbone). If
the random-VGG evaluators did the same, trial seed 1001 would rebuild evaluator 1001 bit for bit and the style
loss would be optimised on the very features that score it. So an evaluator draws its weights from a private
`torch.Generator` seeded with `evaluator_stream_seed(seed)`: 64 bits of sha256 over a salt and the evaluator seed.
Only a training seed equal to that 64-bit number (modulo 2^64, as torch reduces seeds) could reach the stream;
`evaluator_seed_collisions` names such seeds, and also plain equality, which a reader would take for sharing.
"""

from __future__ import annotations

import hashlib
from collections.abc import Iterable

EVALUATOR_SALT = "ablate/evaluation/random-vgg/v1"  # changing it changes every random-evaluator number
TORCH_SEED_MODULUS = 2 ** 64  # torch.manual_seed reduces any int to 64 bits (negative seeds wrap)


def evaluator_stream_seed(seed: int) -> int:
    """The 64-bit seed of evaluator `seed`'s private generator: sha256(salt:seed), first 8 bytes, big-endian."""
    digest = hashlib.sha256(f"{EVALUATOR_SALT}:{int(seed)}".encode()).digest()
    return int.from_bytes(digest[:8], "big")


def evaluator_seed_collisions(training_seeds: Iterable[int], evaluator_seeds: Iterable[int]) -> list[int]:
    """The training seeds (trial seeds, `backbone.seed`) that clash with an evaluator, sorted and unique.

    A clash is either the same number as an evaluator seed (it would suggest a shared network, although the
    weights come from different streams) or the number whose torch stream is an evaluator's salted stream.
    """
    evaluator_seeds = [int(s) for s in evaluator_seeds]
    plain = set(evaluator_seeds)
    streams = {evaluator_stream_seed(s) for s in evaluator_seeds}
    return sorted({int(seed) for seed in training_seeds
                   if int(seed) in plain or int(seed) % TORCH_SEED_MODULUS in streams})
