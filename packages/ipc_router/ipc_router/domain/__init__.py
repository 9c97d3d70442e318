"""Domain layer: pure models and rules, importing nothing else of the project."""

from ipc_router.domain.model import Health, InstanceEvent, InstanceRecord, RegistryCounts, Role
from ipc_router.domain.routing import (
    FailoverPendingError,
    InstanceConflictError,
    NoHealthyInstanceError,
    Registered,
    RoleEvent,
    Route,
    RoutingError,
    RoutingTable,
    UnknownInstanceError,
    UnknownMethodError,
    UnknownServiceError,
)

__all__ = [
    "FailoverPendingError",
    "Health",
    "InstanceEvent",
    "InstanceConflictError",
    "InstanceRecord",
    "NoHealthyInstanceError",
    "Registered",
    "RegistryCounts",
    "Role",
    "RoleEvent",
    "Route",
    "RoutingError",
    "RoutingTable",
    "UnknownInstanceError",
    "UnknownMethodError",
    "UnknownServiceError",
]
