"""The CI gate: the flag rule, `labelaudit check`, and its CI renderings (JUnit, GitHub, JSON)."""
