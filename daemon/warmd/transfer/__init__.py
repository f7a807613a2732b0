"""The download engine: fetch wheels into the store over connections the network guard allows,
resumably, verified against the lock's sha256; mirrors and header checks."""

from ..base.lazy import surface

__all__, __getattr__, __dir__ = surface(__name__, {
    "addresses": ("address_class", "literal",),
    "clients": ("http_client",),
    "connection": ("USER_AGENT", "Connection", "HttpSettings",),
    "credentials": ("index_auth",),
    "fetch": ("HOLDBACK", "Fetcher",),
    "growing": ("GrowingFile",),
    "guard": ("NetGuard", "guard_for",),
    "headers": ("check_pins", "check_url", "compare", "index_page",),
    "links": ("LINK_TTL",),
    "mirrors": ("MIRROR_RETRIES", "SAMPLE_CAP", "MirrorCheck", "MirroredFetcher", "check_mirror",
        "mirror_for", "mirror_progress", "mirror_url", "sample_for",),
    "partial": ("Ledger", "Sidecar", "merge_ranges", "missing_ranges",),
    "retry": ("retry_after",),
    "segments": ("EARLY", "MEASURE", "SURE", "HostMeter", "Pieces", "Width",),
    "store": ("Store",),
    "trust": ("TrustStore", "lock_origins", "recorded",),
    "urls": ("url_key",),
    "vouches": ("Trust", "Vouch", "key", "trusts", "vouches_of",),
})
