"""Recipes: one readable file per end-to-end procedure, all over the same loop (mtkd.loop).

mtl        Algorithm 1 over all tasks            finetune   one task from a model (or bare encoder)
evaluate   dev metrics of the fine-tuned models   predict    test predictions + GLUE submission
teach      teacher ensembles + soft targets       distill    MT-DNN-KD student
pipeline   the stages a config lists, each cached so a rerun resumes after the last finished one
"""
