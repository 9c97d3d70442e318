"""Domain layer: pure models and rules, importing nothing else of the project."""

from ipc_router.domain.model import (
    ContractConflict,
    Health,
    InstanceEvent,
    InstanceRecord,
    RegistryCounts,
    Role,
    contract_conflicts,
)
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
    "ContractConflict",
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
    "contract_conflicts",
]
