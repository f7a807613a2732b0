"""The `warmd` command: its subcommands, doctor, status views, progress and logs."""

from ..base.lazy import surface

__all__, __getattr__, __dir__ = surface(__name__, {
    "doctor": ("diagnose",),
    "findings": ("TROUBLESHOOTING",),
    "main": ("main",),
    "status": ("STATES", "project_statuses",),
})
