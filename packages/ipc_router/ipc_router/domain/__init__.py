"""Domain layer: pure models and rules, importing nothing else of the project."""

from ipc_router.domain.model import Health, InstanceRecord, RegistryCounts, Role
from ipc_router.domain.routing import (
    InstanceConflictError,
    NoHealthyInstanceError,
    Registered,
    Route,
    RoutingError,
    RoutingTable,
    UnknownMethodError,
    UnknownServiceError,
)

__all__ = [
    "Health",
    "InstanceConflictError",
    "InstanceRecord",
    "NoHealthyInstanceError",
    "Registered",
    "RegistryCounts",
    "Role",
    "Route",
    "RoutingError",
    "RoutingTable",
    "UnknownMethodError",
    "UnknownServiceError",
]
