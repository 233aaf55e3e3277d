"""OCPP 1.6J adapters, one module per feature profile."""
