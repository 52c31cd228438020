"""Execution: a Plan's argv steps run through a Runner (real or recording) by one Executor.

Helpers invoked as argv by plans (so a plan stays a list of argv, with no shell and no
extra dependency): `python3 -m agent.execute.haproxy_cmd`, `agent.execute.intent`,
`agent.execute.stop_process`, `agent.execute.unit_props`.
"""

from agent.execute.executor import Executor, step_ok
from agent.execute.runner import RecordingRunner, Runner, SubprocessRunner

__all__ = ["Executor", "RecordingRunner", "Runner", "SubprocessRunner", "step_ok"]
