"""Plots and reports of searches: one search's trajectory and layer heatmap, and a comparison
of several searches read from the tracking backend. matplotlib is imported on first use."""

from tale_opt.reporting.heatmap import Heatmap, heatmap_matrix, parse_candidates, read_candidates

__all__ = ["Heatmap", "heatmap_matrix", "parse_candidates", "read_candidates"]
