"""Damselfly's event catalogue: every control fact of the system, versioned and typed.

Import each name from its module (``events.tasks``, ``events.codec``, …): this package
re-exports nothing, so a command that needs one module (``damselfly get`` needs
``events.taskid``) does not load every event type and the codec with it.
"""
