"""shapeyard's Python client: the control plane, the trainer protocol, and the managed path."""

from shapeyard.client.control import ApiError, ControlClient
from shapeyard.client.futures import RequestFailedError
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
    "RequestFailedError",
    "ServiceClient",
    "TensorData",
    "TrainingClient",
    "managed_training",
]
