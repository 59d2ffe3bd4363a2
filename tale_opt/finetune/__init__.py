"""LoRA fine-tuning ("healing") of a pruned model, and TALE × fine-tuning stages.

One job per module: `settings` (the `finetune` config node, checked), `job` (what one
fine-tune is, and its claim on an output directory), `data` (training examples disjoint from
the search's splits, prompts in the task's format, loss on the answer), `lora` (the pruned
model with adapters), `train` (the Trainer, resumable), `merge` (adapter folded in, exported,
reloaded and compared), `heldout` (accuracy before and after, paired test), `lineage` (original
layer numbers of a re-pruned checkpoint), `outputs` (files and summary table), `run` (one
fine-tune end to end) and `stages` / `table` (the paper's Table 1: baseline, TALE, FT and their
orders, as one resumable command).
"""

from tale_opt.finetune.job import FinetuneJob
from tale_opt.finetune.settings import FinetuneSettings, TrainingData

__all__ = ["FinetuneJob", "FinetuneSettings", "TrainingData"]
