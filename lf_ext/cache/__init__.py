"""Background cache: reuse background tokens and prefix KV for images whose background was seen.

See :mod:`lf_ext.cache.store` for the policy (verified per-unit reuse, byte-bounded LRU, optional
safetensors disk tier).
"""

from lf_ext.cache.codec import CorruptEntryError
from lf_ext.cache.entry import CacheEntry, CacheHit
from lf_ext.cache.fingerprint import fingerprint, max_unit_distance, probe_positions
from lf_ext.cache.store import BackgroundCache

__all__ = ["BackgroundCache", "CacheEntry", "CacheHit", "CorruptEntryError", "fingerprint", "max_unit_distance", "probe_positions"]
