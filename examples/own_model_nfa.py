# %% [markdown]
# # The NFA of a model of your own
#
# Train a small conv net on scikit-learn's 8 x 8 digits, written as a plain `nn.Sequential`,
# then measure the exact AGOP and the NFA metrics of each of its hidden layers with
# `agop_sweep.nfa`: every training image enters the AGOP, with no per-sample autograd.

# %%
import copy
import os

import torch
from sklearn.datasets import load_digits
from torch import nn

from agop_sweep import nfa

EPOCHS = int(os.environ.get("EPOCHS", "30"))
torch.manual_seed(0)
digits = load_digits()
x = torch.tensor(digits.images / 16.0, dtype=torch.float32)[:, None]  # (1797, 1, 8, 8)
y = torch.tensor(digits.target)

model = nn.Sequential(
    nn.Conv2d(1, 8, 3, padding=1), nn.ReLU(), nn.MaxPool2d(2),
    nn.Conv2d(8, 16, 3, padding=1), nn.ReLU(), nn.AdaptiveAvgPool2d(1), nn.Flatten(),
    nn.Linear(16, 32), nn.ReLU(), nn.Linear(32, 10),
)
model0 = copy.deepcopy(model)  # the initial weights, for the delta NFM

# %%
opt = torch.optim.Adam(model.parameters(), lr=3e-3)
for _ in range(EPOCHS):
    for idx in torch.randperm(len(x)).split(128):
        opt.zero_grad()
        nn.functional.cross_entropy(model(x[idx]), y[idx]).backward()
        opt.step()
with torch.no_grad():
    print(f"train accuracy {(model(x).argmax(1) == y).float().mean():.3f} after {EPOCHS} epochs")

# %% [markdown]
# One entry per hidden layer: two conv layers (their AGOP is taken with respect to the 3 x 3
# input patches, summed over positions) and one Linear layer; the readout is left out.

# %%
for layer in nfa(model, x, init=model0):
    m = layer.metrics
    print(f"layer {layer.layer} {layer.kind:6} W {tuple(layer.weight.shape)}  "
          f"AGOP {tuple(layer.agop.shape)}  "
          f"delta_cos_agop {m['delta_cos_agop']:.3f}  raw_cos_agop {m['raw_cos_agop']:.3f}  "
          f"alpha* {layer.alpha_star}")
