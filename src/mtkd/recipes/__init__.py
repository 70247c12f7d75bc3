"""Recipes: one readable file per end-to-end procedure, all over the same loop (mtkd.loop).

mtl        Algorithm 1 over all tasks            finetune   one task from a model (or bare encoder)
evaluate   dev metrics of the fine-tuned models   predict    test predictions + GLUE submission
teach      teacher ensembles + soft targets       distill    MT-DNN-KD student
experiment the paper's Table 3 over seeds: single-task, MT-DNN, ensembles, students (report: mtkd.report)
pipeline   the stages a config lists, each cached so a rerun resumes after the last finished one

What they share: context (config, tasks, data, models: what a recipe needs), job (a training job
and the one stage runner), stages (identities, DONE markers: what the pipeline manages) and
inputs (the checks and tokenising before any stage runs).
"""
