"""The schema: one dataclass per option of every config group, and an enum per closed choice.

Every default lives here, once: an option's YAML under ``conf/`` names its schema in its
defaults list and sets only what the schema leaves open (a schedule's epochs) or what the
option changes. Hydra merges the option into its typed node, so a key of another option
(``optimizer=sgd optimizer.betas=...``) or a value outside an enum fails at composition.

The enums are ``StrEnum`` with member names equal to their values: OmegaConf converts the
string ``relu`` by name, ``cfg.model.act == "relu"`` holds, and :func:`to_container` writes
plain strings.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from enum import StrEnum

from omegaconf import MISSING

from agop_sweep.analyze.names import DEFAULT_METRIC


class Act(StrEnum):
    relu = "relu"
    tanh = "tanh"
    gelu = "gelu"


class Loss(StrEnum):
    mse = "mse"  # squared error against one-hot targets, mean over all entries
    ce = "ce"  # cross-entropy


class ModelName(StrEnum):
    mlp = "mlp"  # the bias-free MLP of the experiment
    cnn = "cnn"  # a bias-free conv net (conv stages, optional fc layers, linear readout)


class Pool(StrEnum):
    max = "max"  # 2x2 max pooling after each conv stage
    avg = "avg"  # 2x2 average pooling
    none = "none"  # no pooling: the stage keeps its spatial size (at stride 1)


class Head(StrEnum):
    gap = "gap"  # global average pooling of the last stage: C numbers per image
    flatten = "flatten"  # the last stage's C x H x W numbers


class ModelInit(StrEnum):
    default = "default"  # PyTorch's default (Kaiming-uniform) init of every layer
    shared_middle = "shared_middle"  # the original script's: identical initial middle layers
    seed = "seed"  # the original script's draws themselves: its weights, bit for bit


class OptimizerName(StrEnum):
    sgd = "sgd"
    adam = "adam"
    muon = "muon"
    muon_seed = "muon_seed"


class MuonScope(StrEnum):
    all = "all"  # every weight matrix on Muon
    middle = "middle"  # the middle layers on Muon, the first and last on Adam (aux_lr)
    hidden = "middle"  # the earlier name of ``middle`` (an alias: it reads back as middle)


class AdjustLR(StrEnum):
    original = "original"  # lr * sqrt(max(1, rows / cols))
    match_rms_adamw = "match_rms_adamw"  # lr * 0.2 * sqrt(max(rows, cols))


class NsDtype(StrEnum):
    auto = "auto"  # bf16 where the device multiplies bf16 at speed (probed once), else fp32
    bf16 = "bf16"  # as torch.optim.Muon and the original script
    fp32 = "fp32"  # float32: for CPUs without native bf16, where bf16 is 50-75x slower


class DatasetName(StrEnum):
    svhn = "svhn"
    digits = "digits"
    synthetic = "synthetic"
    mnist = "mnist"
    fashion_mnist = "fashion_mnist"
    cifar10 = "cifar10"
    cifar100 = "cifar100"
    npz = "npz"


class DataSplit(StrEnum):
    default = "default"  # val = the test set, or data.val_fraction of the train set
    seed = "seed"  # the original script's 80/20 split of the train set


class DataNormalize(StrEnum):
    none = "none"  # pixels scaled into [0, 1] (npz's floats as they are), nothing else
    standardize = "standardize"  # per channel, by the training set's mean and std


class CifarLabels(StrEnum):
    fine = "fine"  # CIFAR-100's 100 classes
    coarse = "coarse"  # its 20 superclasses


class DataLayout(StrEnum):
    nchw = "nchw"  # images N x C x H x W (or N x H x W, or vectors N x D)
    nhwc = "nhwc"  # images N x H x W x C


class DataOrder(StrEnum):
    default = "default"  # a seeded torch.randperm per epoch
    seed = "seed"  # the original script's DataLoader draws, replayed (agop_sweep.data.seed_order)


class Precision(StrEnum):
    fp32 = "fp32"  # exact float32 matmuls
    tf32 = "tf32"  # TF32 matmuls on CUDA
    bf16 = "bf16"  # bfloat16 autocast in the training step
    fp16 = "fp16"  # float16 autocast and a loss scaler in the training step (CUDA only)
    # The original script's choice: fp16 on CUDA, exact fp32 on any other device.
    fp16_on_cuda = "fp16_on_cuda"


class PlotMode(StrEnum):
    live = "live"  # PNG after every analysed epoch, PNG + PDF at the end
    end = "end"  # PNG + PDF at the end only
    off = "off"  # no per-run figures


class CheckpointNames(StrEnum):
    # model_epoch_<E>:<dataset>:width:<W>:depth:<D>:act:<A>:nn.pth, as the original script names them
    default = "default"
    # model_epoch_<E>-<dataset>-width<W>-depth<D>-<A>.pth: no ':' (Windows, scp/rsync host:path)
    portable = "portable"


# -- optimizer -------------------------------------------------------------------------------


@dataclass
class OptimizerConfig:
    """What every optimizer option has: the type of ``Config.optimizer``."""

    name: OptimizerName = MISSING  # the option itself (optimizer=<name>), which picks the schema
    lr: float = MISSING  # the learning rate (each option has its own default)


@dataclass
class TorchOptimizerConfig(OptimizerConfig):
    # torch's weight_decay: L2 added to the gradient (SGD, Adam), decoupled (Muon).
    weight_decay: float = 0.0
    # torch's fused kernel, one per step for all parameters (SGD, Adam, Muon's auxiliary
    # Adam); false: torch's default (a per-parameter loop on CPU, foreach on CUDA).
    fused: bool = True


@dataclass
class SGDConfig(TorchOptimizerConfig):
    """torch.optim.SGD; plain SGD by default, as in the reference setup."""

    name: OptimizerName = OptimizerName.sgd
    lr: float = 0.1
    momentum: float = 0.0  # torch's momentum; 0: plain SGD


@dataclass
class AdamConfig(TorchOptimizerConfig):
    """torch.optim.Adam with PyTorch's default betas and eps."""

    name: OptimizerName = OptimizerName.adam
    lr: float = 0.001
    betas: list[float] = field(default_factory=lambda: [0.9, 0.999])  # Adam's (beta1, beta2)
    eps: float = 1e-8  # added to Adam's denominator


@dataclass
class MuonConfig(TorchOptimizerConfig):
    """torch.optim.Muon (weight decay 0, not torch's 0.1); scope=middle puts the first and
    last layer on an auxiliary Adam(aux_lr, aux_betas, aux_eps)."""

    name: OptimizerName = OptimizerName.muon
    lr: float = 0.01
    momentum: float = 0.95  # the momentum of the update that is orthogonalised
    nesterov: bool = True  # Nesterov momentum
    ns_steps: int = 5  # Newton-Schulz iterations per orthogonalisation
    adjust_lr_fn: AdjustLR = AdjustLR.original  # how the lr is scaled by a weight's shape
    ns_dtype: NsDtype = NsDtype.auto  # the dtype Newton-Schulz runs in (results.json run.ns_dtype)
    scope: MuonScope = MuonScope.all  # which weight matrices Muon takes
    aux_lr: float = 0.001  # scope=middle: lr of the Adam for the first and last layer
    aux_eps: float = 1e-8  # scope=middle: that Adam's eps
    aux_betas: list[float] = field(default_factory=lambda: [0.9, 0.999])  # scope=middle: its betas


@dataclass
class MuonSeedConfig(OptimizerConfig):
    """The original script's Muon (agop_sweep.model.muon_seed.MuonSeed) for every weight matrix."""

    name: OptimizerName = OptimizerName.muon_seed
    lr: float = 0.01
    momentum: float = 0.6  # buf = momentum * buf + g
    nesterov: bool = True  # the direction g + momentum * buf instead of buf
    ns_steps: int = 3  # quintic Newton-Schulz iterations per update
    eps: float = 1e-7  # added to the direction's norm before Newton-Schulz
    renormalize: bool = True  # rescale every weight to Frobenius norm sqrt(d_out) before a step
    ns_dtype: NsDtype = NsDtype.auto  # the dtype Newton-Schulz runs in (results.json run.ns_dtype)
    # Newton-Schulz under torch.compile, as the original runs it: its updates bit for bit with
    # the same torch (eager differs by 1.4-1.9 % a call); costs a compile per weight shape.
    compile: bool = False


# -- data ------------------------------------------------------------------------------------


@dataclass
class DataConfig:
    """What every dataset option has: the type of ``Config.data``."""

    name: DatasetName = MISSING  # the option itself (data=<name>), which picks the schema
    # default: the option's own train/val sets; seed: the original script's 80/20 split of
    # the training set (scikit-learn's train_test_split drawn from NumPy seeded 1717).
    split: DataSplit = DataSplit.default
    # default: a seeded permutation per epoch; seed: the original script's batch order (its
    # DataLoader's draws, which repeat one permutation after every analysed epoch).
    order: DataOrder = DataOrder.default


@dataclass
class CommonDataConfig(DataConfig):
    """What every dataset of real samples shares (all but synthetic, whose n_train is what it
    generates): a held-out fraction, a stratified subset, the normalisation
    (agop_sweep.data.sources.prepare)."""

    # >0: hold out this fraction of the training set as validation instead of the test set.
    val_fraction: float = 0.0
    # >0: train on a class-stratified subset of this many training samples (drawn by seed).
    n_train: int = 0
    normalize: DataNormalize = DataNormalize.none  # what is done to the pixels
    seed: int = 0  # seeds the val_fraction split and the n_train subset (fixed across model seeds)


@dataclass
class DownloadedDataConfig(CommonDataConfig):
    """A dataset in torchvision's layout under root, downloaded from url when missing."""

    root: str = "data"  # the directory that holds (or receives) the files
    verify: bool = True  # check the files' MD5s
    download: bool = True  # download missing files from url
    url: str = MISSING  # where missing files are downloaded from


@dataclass
class SVHNConfig(DownloadedDataConfig):
    """SVHN in torchvision's layout under root (train_32x32.mat, test_32x32.mat)."""

    name: DatasetName = DatasetName.svhn
    root: str = "data/svhn"
    url: str = "http://ufldl.stanford.edu/housenumbers/"
    image_shape: list[int] = field(default_factory=lambda: [3, 32, 32])  # (C, H, W) of an image


@dataclass
class DigitsConfig(CommonDataConfig):
    """scikit-learn's bundled 8x8 digits (1,797 images); val_fraction of them validate (it has
    no test set)."""

    name: DatasetName = DatasetName.digits
    val_fraction: float = 0.2
    image_shape: list[int] = field(default_factory=lambda: [1, 8, 8])  # (C, H, W) of an image


@dataclass
class SyntheticConfig(DataConfig):
    """A seeded random task: Gaussian class prototypes plus noise, squashed into [0, 1]."""

    name: DatasetName = DatasetName.synthetic
    n_train: int = 2048  # training samples generated
    n_val: int = 512  # validation samples generated
    n_features: int = 3072  # inputs per sample
    n_classes: int = 10  # classes (one Gaussian prototype each)
    seed: int = 0  # seeds the task (fixed across model seeds)
    # (channels, height, width) of the feature images; the product is n_features.
    image_shape: list[int] = field(default_factory=lambda: [3, 32, 32])


@dataclass
class MNISTConfig(DownloadedDataConfig):
    """MNIST: <root>/MNIST/raw/{train,t10k}-{images-idx3,labels-idx1}-ubyte(.gz)."""

    name: DatasetName = DatasetName.mnist
    url: str = "https://ossci-datasets.s3.amazonaws.com/mnist/"
    image_shape: list[int] = field(default_factory=lambda: [1, 28, 28])  # (C, H, W) of an image


@dataclass
class FashionMNISTConfig(DownloadedDataConfig):
    """Fashion-MNIST: <root>/FashionMNIST/raw/, the same files as MNIST's."""

    name: DatasetName = DatasetName.fashion_mnist
    url: str = "http://fashion-mnist.s3-website.eu-central-1.amazonaws.com/"
    image_shape: list[int] = field(default_factory=lambda: [1, 28, 28])  # (C, H, W) of an image


@dataclass
class CIFAR10Config(DownloadedDataConfig):
    """CIFAR-10: <root>/cifar-10-batches-py/ (data_batch_1..5, test_batch), from url's tarball."""

    name: DatasetName = DatasetName.cifar10
    url: str = "https://www.cs.toronto.edu/~kriz/"
    image_shape: list[int] = field(default_factory=lambda: [3, 32, 32])  # (C, H, W) of an image


@dataclass
class CIFAR100Config(DownloadedDataConfig):
    """CIFAR-100: <root>/cifar-100-python/ (train, test), from url's tarball."""

    name: DatasetName = DatasetName.cifar100
    url: str = "https://www.cs.toronto.edu/~kriz/"
    labels: CifarLabels = CifarLabels.fine  # which labels are the classes
    image_shape: list[int] = field(default_factory=lambda: [3, 32, 32])  # (C, H, W) of an image


@dataclass
class NpzConfig(CommonDataConfig):
    """Arrays of your own: an .npz with x_train, y_train, x_test, y_test (no pickle)."""

    name: DatasetName = DatasetName.npz
    path: str = "data.npz"  # the .npz file
    layout: DataLayout = DataLayout.nchw  # the axes' order of the file's images
    # (channels, height, width) of an input; []: the file's ((1, 1, D) for vectors).
    image_shape: list[int] = field(default_factory=list)


# -- the other groups and sections -----------------------------------------------------------


@dataclass
class ModelConfig:
    """What every model option has: the type of ``Config.model``."""

    name: ModelName = MISSING  # the option itself (model=<name>), which picks the schema
    act: Act = Act.relu  # the activation after every hidden layer
    # default: PyTorch's init of every layer; shared_middle and seed exist for the MLP only.
    init: ModelInit = ModelInit.default


@dataclass
class MLPConfig(ModelConfig):
    """Bias-free MLP: Linear(in, width), depth-1 x Linear(width, width), Linear(width, classes)."""

    name: ModelName = ModelName.mlp
    width: int = 1024  # units of every hidden layer
    depth: int = 5  # hidden layers, each analysed


@dataclass
class CNNConfig(ModelConfig):
    """Bias-free conv net: per entry of ``channels`` a stage Conv2d(kernel, stride, padding
    kernel // 2) -> act -> pool; then the head (gap or flatten), the hidden Linear layers of
    ``fc`` (each followed by act), and the Linear readout. No biases anywhere."""

    name: ModelName = ModelName.cnn
    channels: list[int] = field(default_factory=lambda: [64, 128, 256])  # one conv stage each
    kernel: int = 3  # every conv's kernel size (padding kernel // 2)
    stride: int = 1  # every conv's stride
    pool: Pool = Pool.max  # the pooling after each stage
    fc: list[int] = field(default_factory=list)  # widths of hidden Linear layers after the head
    head: Head = Head.gap  # how the last stage becomes a vector


@dataclass
class ScheduleConfig:
    """When a run trains, analyses and checkpoints (conf/schedule/: paper, short, smoke)."""

    name: str = MISSING  # the schedule's name (set by its option)
    epochs: int = MISSING  # epochs of training
    # Epochs at which the model is checkpointed and analysed; 0 = the initial weights.
    checkpoints: list[int] = MISSING


@dataclass
class AnalysisConfig:
    """The NFA analysis at every epoch of ``schedule.checkpoints`` (conf/analysis/: default, off)."""

    enabled: bool = True  # false: train and checkpoint only (analyse later with analyze)
    # One of agop_sweep.analyze.names.METRICS, checked by validate.
    primary: str = DEFAULT_METRIC
    # Samples per chunk of the AGOP pass: bounds its extra memory independently of n.
    chunk_size: int = 2048
    # The same for a conv net (model=cnn), whose pass holds classes x chunk x C x H x W
    # numbers per layer: 256 keeps CIFAR-size nets with 64 channels at 32x32 under 2 GiB.
    conv_chunk_size: int = 256
    # Extra per-layer numbers (effective ranks, spectra shares, eigenvector alignment).
    spectra: bool = True
    # Per-run features.npz with the layer-0 diagonals and top eigenvectors.
    save_features: bool = True
    top_eigvecs: int = 8  # leading eigenvectors of the layer-0 NFM and AGOP in features.npz


@dataclass
class EvalConfig:
    """The full-set loss and accuracy passes."""

    # True: train loss/acc of every epoch from a full pass; False: running minibatch average
    # on epochs that are not analysed (analysed epochs always get the full pass for free).
    full_train: bool = True
    batch_size: int = 8192  # samples per batch of the full-set evaluation passes


@dataclass
class TrainerConfig:
    """The training loop: batches, arithmetic, figures, checkpoints."""

    batch_size: int = 128  # samples per training step
    precision: Precision = Precision.tf32  # the arithmetic of the training step
    compile: bool = False  # torch.compile the model (eager where it is unavailable)
    plots: PlotMode = PlotMode.live  # when the run's figures are drawn
    # Every checkpoint carries the optimizer's state (docs: results.md, Output layout); false: only
    # state.pt does, and a checkpoint's "optimizer" is {} (a third of an SGD checkpoint's size for Adam's).
    checkpoint_optimizer: bool = True
    # File names of the checkpoints in models/ (every command reads both kinds).
    checkpoint_names: CheckpointNames = CheckpointNames.default


@dataclass
class LoggerConfig:
    """Experiment trackers (conf/logger/: none, tensorboard, mlflow, wandb, both). Every option
    has this one schema and switches one tracker on, so a list of options merges cleanly:
    ``logger=[tensorboard,mlflow]`` is ``logger=both``. results.json stays the record."""

    # TensorBoard event files (pip install 'agop_sweep[tensorboard]'): a sweep's in
    # <sweep dir>/tensorboard/<run name>/, a single run's in <run dir>/tensorboard/.
    tensorboard: bool = False
    # An MLflow run per job in a tracking store (pip install 'agop_sweep[mlflow]').
    mlflow: bool = False
    # A Weights & Biases run per job (pip install 'agop_sweep[wandb]'); offline without an API key.
    wandb: bool = False
    # MLflow's store; "": sqlite:///<outputs>/mlflow.db, <outputs> being the run dir's nearest
    # ancestor named outputs, else outputs/ in the current directory.
    tracking_uri: str = ""
    # MLflow experiment and W&B group; "": the dir that holds the job (a sweep's dir, a single
    # run's parent).
    experiment: str = ""
    # W&B project and entity ("": the account's default entity).
    wandb_project: str = "agop_sweep"
    wandb_entity: str = ""  # W&B entity (team or user); "": the account's default


@dataclass
class Config:
    """The app's config: the groups above, the sections eval and trainer, and these keys."""

    optimizer: OptimizerConfig = MISSING
    model: ModelConfig = MISSING
    schedule: ScheduleConfig = MISSING
    analysis: AnalysisConfig = MISSING
    data: DataConfig = MISSING
    eval: EvalConfig = field(default_factory=EvalConfig)
    trainer: TrainerConfig = field(default_factory=TrainerConfig)
    # The node's type, so that the options (conf/logger/) name no schema and a list merges.
    logger: LoggerConfig = field(default_factory=LoggerConfig)
    loss: Loss = Loss.mse  # the training loss
    # Initial weights (drawn on the CPU, the same on every device) and batch order; in
    # [0, 2**63 - 1].
    seed: int = 1717
    # auto | cpu | cuda | cuda:N
    device: str = "auto"
    # Torch CPU threads for this job; 0 = this machine's cores split over parallel jobs.
    threads: int = 0
    resume: bool = False  # continue the run in the output dir (docs: Fault tolerance)


# Groups whose options have schemas of their own, by option name (the node's ``name``).
OPTIMIZERS: dict[str, type[OptimizerConfig]] = {
    "sgd": SGDConfig, "adam": AdamConfig, "muon": MuonConfig, "muon_seed": MuonSeedConfig,
}
DATASETS: dict[str, type[DataConfig]] = {
    "svhn": SVHNConfig, "digits": DigitsConfig, "synthetic": SyntheticConfig,
    "mnist": MNISTConfig, "fashion_mnist": FashionMNISTConfig, "cifar10": CIFAR10Config,
    "cifar100": CIFAR100Config, "npz": NpzConfig,
}
MODELS: dict[str, type[ModelConfig]] = {"mlp": MLPConfig, "cnn": CNNConfig}
OPTION_SCHEMAS: dict[str, dict[str, type]] = {"optimizer": OPTIMIZERS, "data": DATASETS, "model": MODELS}
# Groups whose options share one schema: the type of the group's node.
GROUP_SCHEMAS: dict[str, type] = {
    "schedule": ScheduleConfig, "analysis": AnalysisConfig, "logger": LoggerConfig,
}
