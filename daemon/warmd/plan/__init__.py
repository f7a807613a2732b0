"""The plan: which wheels `uv sync` installs on this machine for the variant, and what an upgrade
would pin."""

from ..base.lazy import surface

__all__, __getattr__, __dir__ = surface(__name__, {
    "export": ("parse_export",),
    "inputs": ("interpreter_requests",),
    "planner": ("Planner", "PlanOptions", "ProjectPlan", "is_gpu", "matches", "plan_project",),
    "stacks": ("Build", "build_of", "build_score",),
    "target": ("uv_platform",),
    "upgrade": ("contacts", "copy_for_lock", "exact_pins", "must_build", "needs_build", "would_be_lock",),
    "variant": ("KNOWN_VARIANTS", "Detection", "Runner", "detect_variant", "resolve_variant", "run_command",),
})
