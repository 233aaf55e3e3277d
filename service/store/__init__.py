"""SQLite persistence: database and migrations, the durable outbound queue, overlays."""
