"""Durable safety state under the state directory (see agent/state/store.py)."""

from agent.state.files import StateError
from agent.state.store import Approval, Execution, Fix, HistoryFault, Maintenance, SafetyState

__all__ = [
    "Approval", "Execution", "Fix", "HistoryFault", "Maintenance", "SafetyState", "StateError",
]
