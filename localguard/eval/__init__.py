"""`localguard eval`: attack a model, measure over-refusal and utility, and say which judge decided.

One job per module, in the order data flows:

- options: EvalOptions, Target, AttackTraining; the command line's and a recipe's values as
  options
- prompts: evaluation prompts from safety data files or hub data sets (EvalPrompt, load_prompts)
- suites: the attack suites and the cases they build from prompt sets
- targets: the systems a recipe's run evaluates, the harmful fine-tuning attack's adapters,
  and opening a target as a guard backend
- judges: refusal, safety-head and LLM judges, and the verdict of each case
- stage: evaluate(): every suite on every target, judged, written, resumable
- summary: rates with Wilson intervals, worst cases and the headline (summary.json)
- report: the printed table and report.md
- plots: the PNG plots
"""
