"""evsed: the charger daemon (import package `service`)."""

__version__ = "0.1.0"
