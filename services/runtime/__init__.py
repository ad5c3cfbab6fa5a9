"""What every service runs on: its NATS connection, signal handling, logging (text or JSON
lines), what its Prometheus collectors share, child processes and their ready files, and
the event-log tools (``damselfly events tail|dump``)."""
