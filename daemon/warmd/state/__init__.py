"""warmd's memory in SQLite: projects, their pins, each wheel's state, outcomes, header history."""

from ..base.lazy import surface

__all__, __getattr__, __dir__ = surface(__name__, {
    "database": ("STATE_FILE", "State",),
    "records": ("AheadFile", "Snapshot", "StoredProject", "StoredSkip",),
    "schema": ("MIGRATIONS", "SCHEMA_VERSION", "migrate",),
})
