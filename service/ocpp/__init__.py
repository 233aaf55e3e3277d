"""The OCPP engine: sans-I/O framing (rpc), session (engine), per-version adapters."""
