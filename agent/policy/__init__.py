"""Policy: problem -> ladder of remediation rungs (agent/policy/engine.py, ladder.py)."""
