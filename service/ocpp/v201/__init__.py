"""OCPP 2.0.1 adapters, one module per functional block."""
