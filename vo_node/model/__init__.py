"""The patch network: encoders, patchifier, correlation and update operator, plus model files."""

from vo_node.model.correlation import CorrelationPyramid, correlate, correlation_dim
from vo_node.model.network import (
    DEFAULT_MODEL_NAME,
    ModelFileError,
    VONetwork,
    default_model_path,
    load_model,
    save_model,
)
from vo_node.model.patchifier import PatchBatch, Patchifier
from vo_node.model.update import UpdateOperator

__all__ = [
    "DEFAULT_MODEL_NAME",
    "CorrelationPyramid",
    "ModelFileError",
    "PatchBatch",
    "Patchifier",
    "UpdateOperator",
    "VONetwork",
    "correlate",
    "correlation_dim",
    "default_model_path",
    "load_model",
    "save_model",
]
