"""Domain layer: pure models and rules, importing nothing else of the project."""

from ipc_router.domain.model import Health, InstanceRecord, RegistryCounts, Role

__all__ = ["Health", "InstanceRecord", "RegistryCounts", "Role"]
