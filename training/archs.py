"""Named architectures (`--arch`). Every model takes (N, 1, 28, 28) float in [0, 1] and returns logits.

- seed000..seed004: faithful versions of the five reference designs (10 digit classes, as published;
  with `num_classes=11` they get the project's extra "not a digit" output).
- drnet (the default): the project's own design for accuracy *and* CPU speed: batch norm, early
  pooling, few channels at full resolution (3.3 M multiply-adds per digit).

Each entry also records the training recipe its report used (optimizer, learning rate, batch size,
epochs, schedule, augmentation), which `digitreader train` takes as defaults.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field

import torch
from torch import nn

DEFAULT_ARCH = "drnet"


def _cbr(cin: int, cout: int, k: int = 3, stride: int = 1, pad: int | None = None) -> list[nn.Module]:
    pad = k // 2 if pad is None else pad
    return [nn.Conv2d(cin, cout, k, stride, pad, bias=False), nn.BatchNorm2d(cout), nn.ReLU(inplace=True)]


class DRNet(nn.Module):
    """The default: conv-BN-ReLU with early pooling, global average pool, one linear layer.

    28x28: 1->16 (3x3) -> pool -> 14x14: 16->32 -> pool -> 7x7: 32->64, 64->96 (3x3 valid, 5x5)
    -> global average -> dropout -> linear. 3.3 M multiply-adds per digit; ~16,000 digits/s on one
    CPU core with onnxruntime at batch 256 (candidates measured in docs/training.md).
    """

    def __init__(self, num_classes: int = 11, width: tuple[int, int, int, int] = (16, 32, 64, 96)) -> None:
        super().__init__()
        c1, c2, c3, c4 = width
        self.features = nn.Sequential(
            *_cbr(1, c1),
            nn.MaxPool2d(2),
            *_cbr(c1, c2),
            nn.MaxPool2d(2),
            *_cbr(c2, c3),
            *_cbr(c3, c4, pad=0),
            nn.AdaptiveAvgPool2d(1),
            nn.Flatten(),
        )
        self.head = nn.Sequential(nn.Dropout(0.1), nn.Linear(c4, num_classes))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.features(x))


class DRNetDeep(nn.Module):
    """drnet with two convolutions a stage: more depth at the same 3x3 kernels and early pooling.

    28x28: 1->16 -> pool -> 14x14: 16->32, 32->40 -> pool -> 7x7: 40->96, 96->128 (3x3 valid, 5x5)
    -> global average -> dropout -> linear. About 7.7 M multiply-adds per digit (as much as the two
    networks of the 1.3.0 ensemble together).
    """

    def __init__(self, num_classes: int = 11) -> None:
        super().__init__()
        self.features = nn.Sequential(
            *_cbr(1, 16),
            nn.MaxPool2d(2),
            *_cbr(16, 32),
            *_cbr(32, 40),
            nn.MaxPool2d(2),
            *_cbr(40, 96),
            *_cbr(96, 128, pad=0),
            nn.AdaptiveAvgPool2d(1),
            nn.Flatten(),
        )
        self.head = nn.Sequential(nn.Dropout(0.1), nn.Linear(128, num_classes))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.features(x))


def seed000(num_classes: int = 10) -> nn.Module:
    """3 x (conv 64 3x3, ReLU, max-pool 2x2) -> dense 64 -> dense 32 -> 10."""
    layers: list[nn.Module] = []
    cin = 1
    for _ in range(3):
        layers += [nn.Conv2d(cin, 64, 3), nn.ReLU(), nn.MaxPool2d(2)]
        cin = 64
    # 28 -> 26 -> 13 -> 11 -> 5 -> 3 -> 1
    layers += [nn.Flatten(), nn.Linear(64, 64), nn.ReLU(), nn.Linear(64, 32), nn.ReLU(), nn.Linear(32, num_classes)]
    return nn.Sequential(*layers)


def seed001(num_classes: int = 10) -> nn.Module:
    """conv 32 3x3 same -> pool -> dropout -> conv 64 3x3 -> pool -> dropout -> dense 512 -> dropout -> 10."""
    return nn.Sequential(
        nn.Conv2d(1, 32, 3, padding=1), nn.ReLU(), nn.MaxPool2d(2), nn.Dropout(0.25),
        nn.Conv2d(32, 64, 3), nn.ReLU(), nn.MaxPool2d(2), nn.Dropout(0.25),  # 14 -> 12 -> 6
        nn.Flatten(), nn.Linear(64 * 6 * 6, 512), nn.ReLU(), nn.Dropout(0.5), nn.Linear(512, num_classes),
    )  # fmt: skip


def seed002(num_classes: int = 10) -> nn.Module:
    """conv 32 4x4 -> max-pools -> flatten -> dropout 0.25 -> dense 10 (softmax in the loss)."""
    return nn.Sequential(
        nn.Conv2d(1, 32, 4), nn.ReLU(), nn.MaxPool2d(2), nn.MaxPool2d(2),  # 28 -> 25 -> 12 -> 6
        nn.Flatten(), nn.Dropout(0.25), nn.Linear(32 * 6 * 6, num_classes),
    )  # fmt: skip


def seed003(num_classes: int = 10) -> nn.Module:
    """conv 32 3x3 -> pool -> conv 64 3x3 -> conv 64 3x3 -> pool -> dense 100 -> 10; He init."""
    model = nn.Sequential(
        nn.Conv2d(1, 32, 3), nn.ReLU(), nn.MaxPool2d(2),  # 26 -> 13
        nn.Conv2d(32, 64, 3), nn.ReLU(), nn.Conv2d(64, 64, 3), nn.ReLU(), nn.MaxPool2d(2),  # 11 -> 9 -> 4
        nn.Flatten(), nn.Linear(64 * 4 * 4, 100), nn.ReLU(), nn.Linear(100, num_classes),
    )  # fmt: skip
    for m in model.modules():
        if isinstance(m, nn.Conv2d | nn.Linear):
            nn.init.kaiming_uniform_(m.weight, nonlinearity="relu")
            assert m.bias is not None  # every layer above has a bias
            nn.init.zeros_(m.bias)
    return model


def seed004(num_classes: int = 10) -> nn.Module:
    """A Keras-style Sequential: conv 32 3x3 -> pool -> conv 64 3x3 -> pool -> flatten -> dense 128 -> 10."""
    return nn.Sequential(
        nn.Conv2d(1, 32, 3), nn.ReLU(), nn.MaxPool2d(2),  # 26 -> 13
        nn.Conv2d(32, 64, 3), nn.ReLU(), nn.MaxPool2d(2),  # 11 -> 5
        nn.Flatten(), nn.Linear(64 * 5 * 5, 128), nn.ReLU(), nn.Linear(128, num_classes),
    )  # fmt: skip


@dataclass(frozen=True)
class Recipe:
    """How an architecture is trained by default (its reference report's settings)."""

    build: Callable[[int], nn.Module]
    optimizer: str
    lr: float
    batch_size: int
    epochs: int
    schedule: str  # onecycle | plateau | none
    augment: str  # scan | shift15 | none
    description: str
    claimed: str = "-"  # accuracy its reference report claims
    extra: dict[str, float] = field(default_factory=dict)


ARCHS: dict[str, Recipe] = {
    "drnet": Recipe(lambda n: DRNet(n), "adamw", 4e-3, 128, 20, "onecycle", "scan",
                    "project default: BN CNN, early pooling, GAP head (3.3 M MACs/digit)", "-",
                    {"weight_decay": 5e-4, "label_smoothing": 0.05}),
    "drnet-wide": Recipe(lambda n: DRNet(n, (16, 32, 80, 112)), "adamw", 4e-3, 128, 20, "onecycle", "scan",
                         "drnet with wider 7x7 layers (16-32-80-112; 4.6 M MACs/digit)", "-",
                         {"weight_decay": 5e-4, "label_smoothing": 0.05}),
    "drnet-deep": Recipe(DRNetDeep, "adamw", 4e-3, 128, 20, "onecycle", "scan",
                         "drnet with two convolutions a stage (16-32-40-96-128; 7.7 M MACs/digit)", "-",
                         {"weight_decay": 5e-4, "label_smoothing": 0.05}),
    "seed000": Recipe(seed000, "adam", 1e-3, 128, 10, "none", "none",
                      "3x(conv64 3x3, ReLU, maxpool) -> dense 64 -> dense 32 -> 10", "~98 %"),
    "seed001": Recipe(seed001, "rmsprop", 1e-3, 86, 20, "plateau", "shift15",
                      "conv32 same -> pool -> drop -> conv64 -> pool -> drop -> dense512 -> drop -> 10; RMSprop",
                      "~99 % (validation)"),
    "seed002": Recipe(seed002, "adam", 1e-3, 128, 10, "none", "none",
                      "conv32 4x4 -> maxpools -> flatten -> dropout 0.25 -> dense 10; Adam", "99.07 %"),
    "seed003": Recipe(seed003, "sgd", 1e-2, 16, 10, "none", "none",
                      "conv32 -> pool -> conv64 -> conv64 -> pool -> dense100 -> 10; He init; SGD 0.01 m0.9, batch 16",
                      "99.05 %", {"momentum": 0.9}),
    "seed004": Recipe(seed004, "adam", 1e-3, 128, 10, "none", "none",
                      "Keras-style Sequential conv/pool/dense; Adam, categorical cross-entropy", "-"),
}  # fmt: skip


class Ensemble(nn.Module):
    """Several independently trained members read as one model: the mean of their logits.

    Its architecture name joins the members' with "+" (e.g. "drnet+drnet-wide"); `training.ensemble`
    builds one from finished runs. Exported to ONNX it is still one graph, one file.
    """

    def __init__(self, members: list[nn.Module]) -> None:
        super().__init__()
        self.members = nn.ModuleList(members)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.stack([m(x) for m in self.members]).mean(0)


class Cascade(nn.Module):
    """A reader and a second opinion asked only when the reader is unsure.

    `first` reads every crop. The crops whose calibrated confidence, softmax(logits / t_first).max(),
    is under `gate` are read again by `second`, and for those the answer is the mean of all the
    members' logits (each member of `first` and of `second` weighed alike: an ensemble of them all)
    divided by `t_all`. Every row of the output is thus a calibrated logit of the model that read it;
    the temperature fitted on top of it by `training.run.finalize` comes out close to 1.

    Most crops are read by `first` alone, so the cascade costs little more than `first`: the second
    opinion runs on the few unsure crops (NonZero, Gather and ScatterND in the exported graph: still one
    ONNX file). In training mode (fine-tuning on corrections) every crop goes through both and the
    output is the mean of all the members' logits; `fit_temperatures` must be run again afterwards.
    Its architecture name is the two parts' joined by ">" (e.g. "drnet+drnet-wide>drnet-deep+drnet-deep");
    the gate and the two temperatures are buffers, kept in the state dict.
    """

    gate: torch.Tensor
    t_first: torch.Tensor
    t_all: torch.Tensor

    def __init__(self, first: nn.Module, second: nn.Module, gate: float = 0.99) -> None:
        super().__init__()
        self.first = first
        self.second = second
        self.n_first = len(first.members) if isinstance(first, Ensemble) else 1
        self.n_second = len(second.members) if isinstance(second, Ensemble) else 1
        self.register_buffer("gate", torch.tensor(float(gate)))
        self.register_buffer("t_first", torch.tensor(1.0))
        self.register_buffer("t_all", torch.tensor(1.0))

    def _all(self, z_first: torch.Tensor, z_second: torch.Tensor) -> torch.Tensor:
        return (self.n_first * z_first + self.n_second * z_second) / (self.n_first + self.n_second)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        z1 = self.first(x)
        if self.training:
            return self._all(z1, self.second(x))
        c1 = z1 / self.t_first
        unsure = torch.nonzero(torch.softmax(c1, 1).amax(1) < self.gate).squeeze(1)
        z2 = self.second(x.index_select(0, unsure))
        return c1.index_copy(0, unsure, self._all(z1.index_select(0, unsure), z2) / self.t_all)

    def raw_logits(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """(first's logits, all members' mean logits) of every crop, uncalibrated (for fitting)."""
        z1 = self.first(x)
        return z1, self._all(z1, self.second(x))


def is_known(arch: str) -> bool:
    """A single architecture of ARCHS, an ensemble of them ("a+b"), or a cascade of two ("a+b>c+d")."""
    parts = arch.split(">")
    return len(parts) <= 2 and all(part in ARCHS for p in parts for part in p.split("+"))


def build(arch: str, num_classes: int = 11) -> nn.Module:
    if not is_known(arch):
        raise KeyError(f"unknown architecture {arch!r}; choose one of {', '.join(ARCHS)} "
                       "(or an ensemble a+b, or a cascade a+b>c)")  # fmt: skip
    if ">" in arch:
        first, second = arch.split(">")
        return Cascade(build(first, num_classes), build(second, num_classes))
    if "+" in arch:
        return Ensemble([ARCHS[part].build(num_classes) for part in arch.split("+")])
    return ARCHS[arch].build(num_classes)


def count_macs(model: nn.Module) -> int:
    """Multiply-adds per digit of the conv and linear layers (hooks on one forward pass)."""
    total = 0

    def hook(m: nn.Module, inp: tuple[torch.Tensor, ...], out: torch.Tensor) -> None:
        nonlocal total
        if isinstance(m, nn.Conv2d):
            total += int(out[0].numel() * m.in_channels // m.groups * m.kernel_size[0] * m.kernel_size[1])
        elif isinstance(m, nn.Linear):
            total += int(m.in_features * m.out_features)

    handles = [m.register_forward_hook(hook) for m in model.modules() if isinstance(m, nn.Conv2d | nn.Linear)]
    was = model.training
    model.eval()
    with torch.no_grad():
        model(torch.zeros(1, 1, 28, 28))
    model.train(was)
    for h in handles:
        h.remove()
    return total
