"""Measuring an audit against known truth: ranking and segmentation metrics, and `labelaudit evaluate`."""
