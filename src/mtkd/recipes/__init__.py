"""Recipes: one readable file per end-to-end procedure, each describing its jobs for the one runner.

mtl        Algorithm 1 over all tasks            finetune   one task from a model (or bare encoder)
evaluate   dev metrics of the fine-tuned models   predict    test predictions + GLUE submission
teach      teacher ensembles + soft targets       distill    MT-DNN-KD student
pipeline   the stages a config lists, for every seed: planned, then run, each cached so a rerun
           resumes after the last finished one
experiment the paper's Table 3 report over seeds: single-task, MT-DNN, ensembles, students (mtkd.report)

What they share: runner (training jobs, the one runner that plans and runs every job) and inputs
(the checks and tokenising before any stage runs). Their building blocks are the library: task
data (mtkd.task_data), stages and identities (mtkd.stages), models (mtkd.model), the loop.
"""
