# %% [markdown]
# # From a finished sweep to a figure of your own
#
# `agop_sweep.load_runs` reads every run below a directory into the tidy table that
# `aggregate` writes (`metrics.parquet`): one row per run x epoch x layer x metric. From there
# any figure is a few lines of pandas. Run a sweep first, for example
#
#     python -m agop_sweep -m model=cnn optimizer=sgd,adam,muon data=digits \
#         model.channels=[8,16] schedule=short hydra.sweep.dir=outputs/cnn_digits
#
# and point `SWEEP` at it.

# %%
import os

import matplotlib.pyplot as plt

from agop_sweep import load_runs

SWEEP = os.environ.get("SWEEP", "outputs/cnn_digits")
df = load_runs(SWEEP)
df.head()

# %% [markdown]
# The primary correlation of the last layer, per optimizer, over epochs; and the final
# values of every layer as a table.

# %%
corr = df[df.metric == "delta_cos_agop"].dropna(subset=["layer", "value"])
last_layer = corr.layer.max()
fig, ax = plt.subplots(figsize=(5, 3.2))
for optimizer, rows in corr[corr.layer == last_layer].groupby("optimizer"):
    mean = rows.groupby("epoch").value.mean()
    ax.plot(mean.index, mean.values, marker="o", label=optimizer)
ax.set(xlabel="epoch", ylabel=f"delta_cos_agop, layer {last_layer}", ylim=(0, 1))
ax.legend()
fig.savefig(os.environ.get("FIGURE", "last_layer.png"), dpi=100)

final = corr[corr.epoch == corr.epoch.max()].pivot_table(index="optimizer", columns="layer", values="value")
print(final.round(3))
