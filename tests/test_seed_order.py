"""experiment=seed against the original script's own loop: its initial weights bit for bit,
its batch order, and its loss at every step.

The original loop is re-implemented here from the script's description, independently of
agop_sweep.data.seed_order: its ``Net`` (nn.Sequential blocks, the middle ones deep copies of one),
a real ``DataLoader(shuffle=True)`` over (image, one-hot) pairs, ``nn.MSELoss``, the epoch-0
loss pass, and at every analysed epoch a validation pass and its analysis's effect on torch's
generator: ``torch.manual_seed`` and the networks the analysis builds.
"""

from __future__ import annotations

import copy
import math

import pytest
import torch
from torch import nn
from torch.nn import functional as F

from agop_sweep.config import validate
from agop_sweep.data.datasets import load_dataset
from agop_sweep.data.seed_order import SeedOrder
from agop_sweep.model.mlp import build_model
from agop_sweep.run.device import Placement
from agop_sweep.run.trainer import Trainer


class OriginalNet(nn.Module):
    """The original's Net: ``first``, ``depth - 1`` deep copies of one (ReLU, Linear) block, then
    (ReLU, Linear) to the classes; for depth 1 ``first`` and ``fc``. No biases."""

    def __init__(self, dim: int, depth: int, width: int, num_classes: int):
        super().__init__()
        self.depth = depth
        if depth == 1:
            self.first = nn.Linear(dim, width, bias=False)
            self.fc = nn.Sequential(nn.ReLU(), nn.Linear(width, num_classes, bias=False))
            return
        module = nn.Sequential(nn.ReLU(), nn.Linear(width, width, bias=False))
        self.first = nn.Sequential(nn.Linear(dim, width, bias=False))
        self.middle = nn.ModuleList([copy.deepcopy(module) for _ in range(depth - 1)])
        self.last = nn.Sequential(nn.ReLU(), nn.Linear(width, num_classes, bias=False))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.depth == 1:
            return self.fc(self.first(x))
        o = self.first(x)
        for m in self.middle:
            o = m(o)
        return self.last(o)


def _original_analysis_draws(seed: int, dim: int, depth: int, width: int, classes: int) -> None:
    """What the original's analysis does to torch's global generator: it reseeds, loads the
    initial network, then per layer the network and the sub-network above the layer."""
    torch.manual_seed(seed)
    OriginalNet(dim, depth, width, classes)
    for layer in range(depth):
        OriginalNet(dim, depth, width, classes)
        OriginalNet(dim if layer == 0 else width, depth - layer, width, classes)


def original_run(data, seed: int, width: int, depth: int, epochs: int, analysed: set[int],
                 optimizer: str, lr: float, batches: list | None = None):
    """The original loop on ``data``: (initial weights, loss of every step)."""
    classes = data.n_classes
    onehot = F.one_hot(data.y_train, classes).float()
    torch.manual_seed(seed)
    x_train, x_val = data.x_train.flatten(1), data.x_val.flatten(1)  # the script's flat vectors
    train = [(x_train[i], onehot[i]) for i in range(data.n_train)]
    val = [(x_val[i], F.one_hot(data.y_val[i], classes).float()) for i in range(data.n_val)]
    trainloader = torch.utils.data.DataLoader(train, batch_size=128, shuffle=True)
    valloader = torch.utils.data.DataLoader(val, batch_size=128, shuffle=False)
    for inputs, _ in trainloader:
        dim = inputs.shape[1]
        break
    net = OriginalNet(dim, depth, width, classes)
    init = [p.detach().clone() for p in net.parameters()]
    opt = (torch.optim.SGD if optimizer == "sgd" else torch.optim.Adam)(net.parameters(), lr=lr)
    criterion = nn.MSELoss()
    losses = []
    for epoch in range(epochs + 1):
        if epoch > 0:
            for inputs, labels in trainloader:
                opt.zero_grad(set_to_none=True)
                loss = criterion(net(inputs), labels)
                loss.backward()
                opt.step()
                net.zero_grad(set_to_none=True)
                losses.append(loss.item())
        else:
            with torch.no_grad():
                for inputs, labels in trainloader:
                    criterion(net(inputs), labels)
        if epoch in analysed:
            with torch.no_grad():
                for inputs, labels in valloader:
                    criterion(net(inputs), labels)
            _original_analysis_draws(seed, dim, depth, width, classes)
    return init, losses


OVERRIDES = ["experiment=seed", "data=digits", "model.width=32", "model.depth=3", "device=cpu",
             "threads=1", "trainer.plots=off", "schedule=smoke", "schedule.epochs=4",
             "schedule.checkpoints=[0,1,2,4]", "analysis.save_features=false"]


@pytest.mark.parametrize(("depth", "width"), [(3, 32), (1, 16), (5, 24)])
def test_initial_weights_are_the_originals_bit_for_bit(depth: int, width: int) -> None:
    torch.manual_seed(1717)
    loader = torch.utils.data.DataLoader([(torch.zeros(64), torch.zeros(10))] * 300, batch_size=128,
                                         shuffle=True)
    next(iter(loader))
    original = [p.detach().clone() for p in OriginalNet(64, depth, width, 10).parameters()]
    torch.manual_seed(1717)
    ours = build_model(64, width, depth, 10, "relu", init="seed")
    ours_in_order = [ours.first.weight, *(m.weight for m in ours.middle), ours.last.weight]
    assert len(original) == len(ours_in_order) == depth + 1
    for a, b in zip(original, ours_in_order, strict=True):
        assert torch.equal(a, b.detach())


@pytest.mark.parametrize("optimizer", ["sgd", "adam"])
def test_experiment_seed_follows_the_original_loss_at_every_step(optimizer: str, compose_config,
                                                                 tmp_path, monkeypatch) -> None:
    cfg = compose_config(*OVERRIDES, f"optimizer={optimizer}")
    validate(cfg)
    data = load_dataset(cfg.data, torch.device("cpu"))
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        init, expected = original_run(data, cfg.seed, cfg.model.width, cfg.model.depth, cfg.schedule.epochs,
                                      set(cfg.schedule.checkpoints), optimizer, cfg.optimizer.lr)
        got: list[float] = []
        forward_loss = Trainer._forward_loss

        def recording(self, xb, yb):
            logits, loss = forward_loss(self, xb, yb)
            if torch.is_grad_enabled():
                got.append(loss.item())
            return logits, loss

        monkeypatch.setattr(Trainer, "_forward_loss", recording)
        trainer = Trainer(cfg, tmp_path, Placement("cpu", 1))
        trainer.run()
    finally:
        torch.set_num_threads(threads)
    epoch0 = torch.load(tmp_path / "models" / next(p.name for p in (tmp_path / "models").iterdir()
                                                   if p.name.startswith("model_epoch_0")),
                        weights_only=True)["state_dict"]
    for a, key in zip(init, ["first.weight", *(f"middle.{i}.weight" for i in range(2)), "last.weight"],
                      strict=True):
        assert torch.equal(a, epoch0[key]), key
    steps = math.ceil(data.n_train / 128)
    assert len(got) == len(expected) == 4 * steps
    if optimizer == "sgd":  # the same float32 operations: bit for bit (48 steps measured)
        assert got == expected
    # Adam's fused kernel (optimizer.fused, the default) rounds differently from torch's
    # per-parameter Adam: 1.7e-7 at most over the 48 steps; with fused=false, bit for bit.
    for step, (a, b) in enumerate(zip(got, expected, strict=True)):
        assert a == pytest.approx(b, rel=1e-6), f"step {step}: {a} != {b}"


def test_permutations_are_the_dataloaders() -> None:
    """Every epoch's order against a real DataLoader over sample indices, driven as the
    original drives it: analysed epochs reset the generator, the others do not."""
    n, dim, width, depth, classes, analysed = 300, 12, 8, 3, 4, {0, 1, 2, 5}
    order = SeedOrder(1717, n, dim, width, depth, classes, analysed)
    torch.manual_seed(1717)
    loader = torch.utils.data.DataLoader(list(range(n)), batch_size=128, shuffle=True)
    val = torch.utils.data.DataLoader(list(range(10)), batch_size=128)
    next(iter(loader))
    OriginalNet(dim, depth, width, classes)
    seen = []
    for epoch in range(8):
        order_e = torch.cat(list(loader))
        if epoch > 0:
            seen.append(order_e)
            assert torch.equal(order_e, order.permutation(epoch)), epoch
        if epoch in analysed:
            list(val)
            _original_analysis_draws(1717, dim, depth, width, classes)
    # Epochs 1, 2 and 3 follow analysed epochs: one permutation; 4 follows an unanalysed one.
    assert torch.equal(seen[0], seen[1]) and torch.equal(seen[1], seen[2])
    assert not torch.equal(seen[2], seen[3])
    assert torch.equal(seen[5], seen[0])  # 6 follows the analysed epoch 5
    with pytest.raises(ValueError, match="epoch 0 takes no steps"):
        order.permutation(0)
