"""The `evaluate` command's job: score a model, drop sets of it or a search's picks on the
held-out split of one or more tasks, lm-evaluation-harness style, and the cross-task transfer
matrix of a set of searches. (The evaluator itself is `tale_opt.evaluation`.)

One job per module: `plan` (what is scored, on which splits; known before any weights load),
`run` (load once, score each distinct drop set once per task, paired tests against the
Baseline), `transfer` (tasks × configurations deltas) and `outputs` (evaluation.json,
predictions, the printed table, transfer.md/.png).
"""

from tale_opt.evaluate.plan import Configuration, EvaluationPlan, SearchedSplit, TaskSetting

__all__ = ["Configuration", "EvaluationPlan", "SearchedSplit", "TaskSetting"]
