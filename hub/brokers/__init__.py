"""Broker implementations: ``rabbitmq`` (pika) and ``memory`` (in-process)."""

__all__: list[str] = []
