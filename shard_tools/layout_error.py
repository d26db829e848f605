"""`LayoutError`, apart from layout.py so that objstore.py (which layout.py calls) can subclass it without
importing layout: a packed set, shard, index or object that cannot be read as the layout says."""
from __future__ import annotations

from .errors import UserError


class LayoutError(UserError, ValueError):
    """A packed set, a shard or an index that cannot be read as the layout says."""
