"""shapeyard's Python client: the control plane, the trainer protocol, and the managed path."""

from shapeyard.client.control import ControlClient
from shapeyard.client.http import ApiError
from shapeyard.client.managed import ManagedTraining, managed_training
from shapeyard.client.training import ServiceClient, TrainingClient
from shapeyard.wire.trainer import AdamParams, Datum, ModelInput, TensorData

__all__ = [
    "AdamParams",
    "ApiError",
    "ControlClient",
    "Datum",
    "ManagedTraining",
    "ModelInput",
    "ServiceClient",
    "TensorData",
    "TrainingClient",
    "managed_training",
]
