"""Websocket link to the CSMS: security profiles, TLS, backoff, connection manager."""
