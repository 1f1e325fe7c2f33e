"""K structurally identical networks run as one (HFTA-style horizontal fusion), parameters kept per member.

"grouped": member k owns channels [k·C, (k+1)·C) of every activation [B, K·C, H, W]; each conv becomes one
grouped conv (groups × K) whose weight is the members' own weights concatenated at call time, so gradients flow
back into each member's own parameter tensors (each member keeps its own optimiser, checkpoint, state dict).
A transposed conv's weight, [Cin, Cout/groups, kh, kw], concatenates the same way along dim 0 (the input side).
Instance norm and group norm are per sample and per channel group; pads, activations and resizes are per
channel: the fused forward is each member's own forward, up to the fp32 rounding of the grouped kernels.
"looped": the same fused layers with K = 1 per member, i.e. each member's own kernels, bit for bit its own
forward. In both, spectral norm stays per member (each member's parametrisation runs its own power iteration
on its own u/v buffers, as in its own forward) and dropout draws each member's mask from its own generator.

Routes measured on the 2-core CPU (G v1 forward + backward, 64 px, batch 4, seconds per member, min of 3,
K = 1 / 4 / 9): K separate module calls 0.439 / 0.433 / 0.434; hand-fused grouped convs 0.433 / 0.479 / 0.617;
torch.func (`functional_call` + `vmap` over stacked weights, which lowers to the same grouped convs) 0.521 /
0.576 / 0.797. vmap adds a batching layer and a torch.stack of every weight per call, and could neither draw
per-member dropout masks from per-member generators nor run each member's spectral-norm parametrisation: the
hand-fused route it is. On this CPU oneDNN's grouped convs cost more per member than K plain ones (K = 4,
forward + backward, ms: 3×3 64→64 at 64 px 97 vs 118; 1×1 256→512 at 16 px 22 vs 32; depthwise 512 at 16 px
5.8 vs 15.8), so CPUs run "looped" and the array's CPU gain comes from the shared backbone work; GPUs, where one
large kernel beats K small launches, run "grouped" (benchmarks/trial_arrays.py times both on CUDA). Grouped
kernels round differently from the plain ones, and Adam turns rounding-level differences of near-zero
gradients into ±lr steps within a few GAN steps: "grouped" matches the one-trial run per step (to 1e-4), not
over a whole run; "looped" matches it bit for bit.
"""

from __future__ import annotations

import copy
import weakref
from collections.abc import Sequence
from typing import Literal

import torch
import torch.nn.functional as F
from torch import Tensor, nn


def stack_channels(images: Sequence[Tensor]) -> Tensor:
    """K tensors [N, C, H, W] -> [N, K·C, H, W], member k in channels [k·C, (k+1)·C)."""
    return images[0] if len(images) == 1 else torch.cat(list(images), dim=1)


def split_channels(stacked: Tensor, count: int) -> list[Tensor]:
    """[N, K·C, H, W] -> K views [N, C, H, W] (the inverse of `stack_channels`)."""
    return list(stacked.chunk(count, dim=1)) if count > 1 else [stacked]


def _cat(tensors: list[Tensor]) -> Tensor:
    # one member: its own tensor, so K=1 runs the unfused kernels with no copy
    return tensors[0] if len(tensors) == 1 else torch.cat(tensors)


class _Call:
    """What one fused call runs on: each member's leaf modules (in skeleton order) and its generator."""

    def __init__(self) -> None:
        self.per_member: list[list[nn.Module]] = []
        self.rngs: Sequence[torch.Generator] | None = None

    def leaves(self, index: int) -> list[nn.Module]:
        return [leaves[index] for leaves in self.per_member]


class _FusedConv(nn.Module):
    def __init__(self, conv: nn.Conv2d, index: int, call: _Call) -> None:
        super().__init__()
        if conv.padding_mode != "zeros" or isinstance(conv.padding, str):
            raise TypeError(f"fused conv: padding {conv.padding!r} / {conv.padding_mode!r} is not supported")
        self.stride, self.padding, self.dilation, self.groups = conv.stride, conv.padding, conv.dilation, conv.groups
        self.index, self.call = index, call

    def forward(self, x: Tensor) -> Tensor:
        convs = self.call.leaves(self.index)
        # `.weight` runs each member's parametrisation (spectral norm: its own power iteration) as its forward would
        weight = _cat([c.weight for c in convs])  # [K·Cout, Cin/groups, kh, kw]
        bias = _cat([c.bias for c in convs]) if convs[0].bias is not None else None
        return F.conv2d(x, weight, bias, self.stride, self.padding, self.dilation, self.groups * len(convs))


class _FusedConvTranspose(nn.Module):
    def __init__(self, conv: nn.ConvTranspose2d, index: int, call: _Call) -> None:
        super().__init__()
        if conv.padding_mode != "zeros":
            raise TypeError(f"fused transposed conv: padding mode {conv.padding_mode!r} is not supported")
        self.stride, self.padding, self.dilation, self.groups = conv.stride, conv.padding, conv.dilation, conv.groups
        self.output_padding, self.index, self.call = conv.output_padding, index, call

    def forward(self, x: Tensor) -> Tensor:
        convs = self.call.leaves(self.index)
        # a transposed conv's weight is [Cin, Cout/groups, kh, kw]: members stack along the input channels
        weight = _cat([c.weight for c in convs])  # [K·Cin, Cout/groups, kh, kw]
        bias = _cat([c.bias for c in convs]) if convs[0].bias is not None else None
        return F.conv_transpose2d(x, weight, bias, self.stride, self.padding, self.output_padding,
                                  self.groups * len(convs), self.dilation)


class _FusedInstanceNorm(nn.Module):
    def __init__(self, norm: nn.InstanceNorm2d, index: int, call: _Call) -> None:
        super().__init__()
        if norm.track_running_stats:
            raise TypeError("fused instance norm: running statistics are not supported")
        self.eps, self.index, self.call = norm.eps, index, call

    def forward(self, x: Tensor) -> Tensor:
        norms = self.call.leaves(self.index)
        weight = _cat([n.weight for n in norms]) if norms[0].affine else None
        bias = _cat([n.bias for n in norms]) if norms[0].affine else None
        return F.instance_norm(x, None, None, weight, bias, True, 0.0, self.eps)


class _FusedGroupNorm(nn.Module):
    def __init__(self, norm: nn.GroupNorm, index: int, call: _Call) -> None:
        super().__init__()
        self.groups, self.eps, self.index, self.call = norm.num_groups, norm.eps, index, call

    def forward(self, x: Tensor) -> Tensor:
        norms = self.call.leaves(self.index)
        weight = _cat([n.weight for n in norms]) if norms[0].affine else None
        bias = _cat([n.bias for n in norms]) if norms[0].affine else None
        # member k's groups are groups [k·G, (k+1)·G): each normalises over its own channels only
        return F.group_norm(x, self.groups * len(norms), weight, bias, self.eps)


class _FusedDropout2d(nn.Module):
    def __init__(self, dropout: nn.Dropout2d, index: int, call: _Call) -> None:
        super().__init__()
        self.p, self.index, self.call = dropout.p, index, call

    def forward(self, x: Tensor) -> Tensor:
        drops = self.call.leaves(self.index)
        if not drops[0].training or self.p == 0:
            return x
        if self.call.rngs is None:
            raise ValueError("fused dropout: pass one generator per member")
        n, channels = x.shape[0], x.shape[1] // len(drops)
        # the mask ATen's feature dropout draws (bernoulli_(1 - p) on [N, C, 1, 1], then / (1 - p)), but from
        # each member's own generator, so a member's draws do not depend on who it is fused with
        masks = [torch.empty((n, channels, 1, 1), dtype=x.dtype, device=x.device).bernoulli_(1 - self.p, generator=rng)
                 .div_(1 - self.p) for rng in self.call.rngs]
        return x * torch.cat(masks, dim=1)  # [N, K·C, 1, 1] broadcast over H, W


_FUSED_LEAVES: tuple[tuple[type[nn.Module], type[nn.Module]], ...] = (
    # ConvTranspose2d is no Conv2d subclass (both derive from _ConvNd), so isinstance keeps the two apart
    (nn.Conv2d, _FusedConv), (nn.ConvTranspose2d, _FusedConvTranspose), (nn.InstanceNorm2d, _FusedInstanceNorm),
    (nn.GroupNorm, _FusedGroupNorm), (nn.Dropout2d, _FusedDropout2d),
)


FuseMode = Literal["grouped", "looped"]


def default_mode(device: torch.device) -> FuseMode:
    """Grouped kernels where they should pay (a GPU: one large kernel instead of K small ones, as HFTA found); on
    a CPU each member's own kernels are faster (oneDNN's grouped convs cost 1.1-2.7x more, see above)."""
    return "grouped" if device.type == "cuda" else "looped"


class FusedNet:
    """The forward of K modules of `template`'s structure; parameters stay in the members.

        fused = FusedNet(discriminators[0])
        logits = fused(discriminators, images, rngs)   # one output per member, as its own module computes it

    "grouped" runs one channel-stacked network; "looped" runs each member through the same fused layers
    with K = 1 (its own kernels, but still its dropout from its generator). Any subset of members, in any
    order, may be run per call.
    """

    def __init__(self, template: nn.Module, mode: FuseMode = "grouped") -> None:
        self.mode = mode
        self.call = _Call()
        self.skeleton = copy.deepcopy(template)  # the containers' own forward code, with fused leaves swapped in
        self.paths: list[str] = []
        for path, module in list(self.skeleton.named_modules()):
            fused_type = next((f for t, f in _FUSED_LEAVES if isinstance(module, t)), None)
            if fused_type is None or any(path.startswith(p + ".") for p in self.paths):
                continue
            parent_path, _, name = path.rpartition(".")
            setattr(self.skeleton.get_submodule(parent_path), name, fused_type(module, len(self.paths), self.call))
            self.paths.append(path)
        leftover = [name for name, _ in [*self.skeleton.named_parameters(), *self.skeleton.named_buffers()]]
        if leftover:  # a layer type this file does not know: fusing it would silently share or drop its state
            raise TypeError(f"cannot fuse {type(template).__name__}: unknown layers hold {', '.join(leftover[:3])}")
        # weak keys: a member that left the array (and its memory) is not held here, and a new member that
        # happens to get a freed module's id() can never be served the old one's leaves
        self._leaves: weakref.WeakKeyDictionary[nn.Module, list[nn.Module]] = weakref.WeakKeyDictionary()

    def _member_leaves(self, member: nn.Module) -> list[nn.Module]:
        if member not in self._leaves:
            self._leaves[member] = [member.get_submodule(p) for p in self.paths]
        return self._leaves[member]

    def _run(self, members: Sequence[nn.Module], x: Tensor, rngs: Sequence[torch.Generator] | None) -> Tensor:
        self.call.per_member = [self._member_leaves(m) for m in members]
        self.call.rngs = rngs
        try:
            return self.skeleton(x)
        finally:
            self.call.per_member, self.call.rngs = [], None

    def __call__(self, members: Sequence[nn.Module], inputs: Sequence[Tensor],
                 rngs: Sequence[torch.Generator] | None = None) -> list[Tensor]:
        """K inputs [N, C_in, H, W] (one per member) -> K outputs [N, C_out, H', W']."""
        if self.mode == "looped" or len(members) == 1:
            return [self._run([m], x, None if rngs is None else [rngs[k]])
                    for k, (m, x) in enumerate(zip(members, inputs, strict=True))]
        stacked = self._run(members, stack_channels(inputs), rngs)  # [N, K·C_out, H', W']
        return split_channels(stacked, len(members))
