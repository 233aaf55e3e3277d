"""Version-neutral station model: clock, configuration keys, (later) EVSEs and sessions."""
