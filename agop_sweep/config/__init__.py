"""The config: its typed schema, Hydra's ConfigStore entries, start-up validation, and the
upgrade of configs that earlier versions saved.

- :mod:`.schema`: one dataclass per option of every config group (``conf/``), enums for
  the closed choices, every default;
- :mod:`.store`: :func:`register_configs`, :data:`RUN_CONTROL_KEYS`, :func:`to_container`,
  :func:`flatten` (dotted keys), :func:`sqlite_file` (a store URL's database file);
- :mod:`.validate`: :func:`validate` (one-line :class:`ConfigError`);
- :mod:`.upgrade`: :func:`upgrade_saved_config`.
"""

from agop_sweep.config.schema import (
    DATASETS,
    MODELS,
    OPTIMIZERS,
    Act,
    AdamConfig,
    AdjustLR,
    AnalysisConfig,
    CNNConfig,
    Config,
    DataConfig,
    DatasetName,
    DataSplit,
    DigitsConfig,
    EvalConfig,
    Loss,
    MLPConfig,
    ModelConfig,
    ModelInit,
    ModelName,
    MuonConfig,
    MuonScope,
    MuonSeedConfig,
    OptimizerConfig,
    OptimizerName,
    PlotMode,
    Precision,
    ScheduleConfig,
    SGDConfig,
    SVHNConfig,
    SyntheticConfig,
    TrainerConfig,
)
from agop_sweep.config.store import (
    RUN_CONTROL_KEYS,
    flatten,
    is_run_control_key,
    register_configs,
    run_control_exclude_keys,
    sqlite_file,
    structured,
    to_container,
)
from agop_sweep.config.upgrade import upgrade_saved_config
from agop_sweep.config.validate import check_keys, check_precision, validate
from agop_sweep.errors import ConfigError

__all__ = [
    "DATASETS", "MODELS", "OPTIMIZERS", "RUN_CONTROL_KEYS", "Act", "AdamConfig", "AdjustLR",
    "AnalysisConfig", "CNNConfig", "Config", "ConfigError", "DataConfig", "DataSplit",
    "DatasetName", "DigitsConfig", "EvalConfig", "Loss", "MLPConfig", "ModelConfig", "ModelInit",
    "ModelName", "MuonConfig", "MuonScope", "MuonSeedConfig", "OptimizerConfig", "OptimizerName",
    "PlotMode", "Precision", "SGDConfig", "SVHNConfig", "ScheduleConfig", "SyntheticConfig",
    "TrainerConfig", "check_keys", "check_precision", "flatten", "is_run_control_key",
    "register_configs", "run_control_exclude_keys", "sqlite_file", "structured", "to_container",
    "upgrade_saved_config", "validate",
]
