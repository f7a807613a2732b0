"""The download engine: fetch wheels into the store over connections the network guard allows,
resumably, verified against the lock's sha256; mirrors and header checks."""

from ..base.lazy import surface

__all__, __getattr__, __dir__ = surface(__name__, {
    "clients": ("http_client",),
    "connection": ("Connection", "HttpSettings",),
    "credentials": ("index_auth",),
    "fetch": ("HOLDBACK", "LINK_TTL", "Fetcher", "FetchSkipped", "host_of",),
    "growing": ("GrowingFile",),
    "guard": ("NetGuard", "Refused", "Trust", "Vouch", "address_class", "guard_for", "key", "literal",
        "origin", "trusts", "under", "url_key", "vouches_of",),
    "headers": ("check_pins", "check_url", "compare", "index_page",),
    "mirrors": ("MIRROR_RETRIES", "SAMPLE_CAP", "MirrorCheck", "MirroredFetcher", "check_mirror",
        "mirror_for", "mirror_progress", "mirror_url", "sample_for",),
    "partial": ("Ledger", "Sidecar", "merge_ranges", "missing_ranges",),
    "ranges": ("FetchCancelled",),
    "retry": ("retry_after",),
    "segments": ("EARLY", "MEASURE", "SURE", "HostMeter", "Pieces", "Width",),
    "store": ("Store",),
    "trust": ("TrustStore", "lock_origins", "recorded",),
})
