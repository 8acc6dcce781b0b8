"""The CI gate: `labelaudit check` (check.py) and its CI renderings (ci.py: JUnit, GitHub, JSON)."""
