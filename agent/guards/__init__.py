"""Guards: every proposal passes the chain; any deny wins (agent/guards/base.py)."""

from agent.guards.base import (
    ChainResult,
    Guard,
    GuardChain,
    LeaseClient,
    NoCoordinator,
)
from agent.guards.build import build_chain
from agent.guards.settings import GuardSettings, parse_guards
from agent.model import Lease  # the chain's leases: a value of agent/model.py

__all__ = [
    "ChainResult", "Guard", "GuardChain", "GuardSettings", "Lease", "LeaseClient",
    "NoCoordinator", "build_chain", "parse_guards",
]
