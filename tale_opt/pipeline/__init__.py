"""The run of one search: plan, candidates, held-out evaluation, summary, outputs, tracking."""
