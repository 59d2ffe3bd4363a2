"""Driving a searcher: who evaluates its candidates, and where results are kept."""
