"""AegisIPC router: registry, routing, failover and JetStream persistence.

Layers, imports pointing inward: ``domain`` (pure) <- ``application`` (use cases and ports)
<- ``infrastructure`` (NATS/JetStream adapters) and ``api`` (NATS endpoints, entry point);
``bootstrap`` is the composition root that wires them.
"""

__version__ = "0.1.0"
