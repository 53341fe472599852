"""gosession-tornado: beego's session manager for Tornado, with gorilla's cookie features.

One interface, many providers (``memory``, ``file``, ``redis``, ``mysql``,
``cookie``, ``redis_cluster``, ``redis_sentinel``, ``postgresql``), each run as
an asyncio actor. See :class:`SessionManager` and :class:`SessionMixin`.
"""

from __future__ import annotations

from . import errors
from .config import ManagerConfig, build_config
from .errors import ConfigError as ConfigError
from .errors import CookieTooLargeError as CookieTooLargeError
from .errors import DuplicateProviderError as DuplicateProviderError
from .errors import ProviderClosedError as ProviderClosedError
from .errors import ProviderUnavailableError as ProviderUnavailableError
from .errors import SessionError as SessionError
from .errors import UnknownProviderError as UnknownProviderError
from .manager import SessionManager, Stats
from .provider import Changes, Provider
from .registry import lookup, provider_names, register, unregister
from .session import Session
from .web import SessionMixin

__version__ = "0.1.0"

__all__ = [
    "__version__",
    "SessionManager",
    "SessionMixin",
    "Session",
    "Provider",
    "Changes",
    "ManagerConfig",
    "Stats",
    "build_config",
    "register",
    "unregister",
    "lookup",
    "provider_names",
]
# The whole error tree is public here too: errors.__all__ names it (the imports above
# are "X as X", the explicit re-export type checkers read).
__all__ += errors.__all__
