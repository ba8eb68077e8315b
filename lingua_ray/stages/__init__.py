"""The four stages, one module each: record → reduce → ablate → report.

Each owns its flow top to bottom with ``run(cfg) -> <typed result>``: validate its inputs,
plan, run on the Ray pool (schedule.py), write through the modules below it. A stage calls
down, never another stage; pipeline.py calls them in order.
"""
