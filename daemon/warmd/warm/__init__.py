"""Warming: the pipeline both drivers run (plan -> fetch -> hand to uv -> prove), the feeder and
importer that hand wheels to uv, limits, the upgrade look-ahead and run outcomes."""

from ..base.lazy import surface

__all__, __getattr__, __dir__ = surface(__name__, {
    "admission": ("admit",),
    "ahead": ("expire", "look_ahead", "postpone_reason", "refusal",),
    "conditions": ("Conditions", "Reading", "metered", "on_battery", "read_conditions",),
    "feeder": ("Feeder", "Shelf",),
    "limits": ("Room", "disks",),
    "outcomes": ("UpgradeStatus", "ahead_held", "limited_words", "needs_user", "outcome_of", "retry_delay",
        "upgrade_of", "upgrade_status",),
    "pipeline": ("Pipeline",),
    "preview": ("preview",),
    "total": ("Candidate", "held_by_total", "last_used", "limited_line", "over_total",),
})
