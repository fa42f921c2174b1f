"""Mask codecs and the storage report: what it costs to keep many binary masks."""
