"""Infrastructure layer: adapters that satisfy the application's ports with NATS/JetStream."""
