"""Django discovers models here; they live beside the code that uses them."""

from reactive.outbox import OutboxEvent
from reactive.replica import ReplicaState

__all__ = ["OutboxEvent", "ReplicaState"]
