# %% [markdown]
# # Reading a run's features.npz
#
# Every run with `analysis.save_features=true` keeps, per analysed epoch, the diagonals of its
# first layer's NFM, delta NFM and AGOP, and their top eigenvectors, in `features.npz`
# (plain arrays, no pickles). For an MLP they are pictures of the input image; for a CNN of
# one filter patch (C x k x k). Point `RUN` at a run directory.

# %%
import os

import matplotlib.pyplot as plt
import numpy as np

from agop_sweep import load_run

RUN = os.environ.get("RUN", "outputs/cnn_digits/run")
features = np.load(os.path.join(RUN, "features.npz"))
print({name: features[name].shape for name in features.files})

# %%
shape = tuple(features["image_shape"])  # (C, H, W) of what layer 0's inputs are pictures of
last = -1  # the last analysed epoch
agop_diag = features["agop_diag"][last].reshape(shape).sum(0)
nfm_diag = features["nfm_delta_diag"][last].reshape(shape).sum(0)
corr = np.corrcoef(agop_diag.ravel(), nfm_diag.ravel())[0, 1]
print(f"epoch {features['epochs'][last]}: Pearson of the two diagonals {corr:.3f}")
record = load_run(RUN)
print("status", record.status, "layers", record.n_layers())

fig, axs = plt.subplots(1, 2, figsize=(5, 2.5))
for ax, image, title in zip(axs, (nfm_diag, agop_diag), ("delta NFM diag", "AGOP diag"), strict=True):
    ax.imshow(image, cmap="magma")
    ax.set_title(title)
    ax.axis("off")
fig.savefig(os.environ.get("FIGURE", "features_diagonals.png"), dpi=100)
