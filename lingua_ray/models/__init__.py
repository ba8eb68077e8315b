"""Models: where each family's FFN neurons are (`adapters`), loading checkpoints (`loading`),
weight fingerprints (`weights`), and test fixtures (`tiny`, `testing`).

Nothing is imported here, so ``import lingua_ray.models.loading`` (the driver's checks) stays
free of torch; `tiny` and `testing` import transformers and pytest when asked for.
"""
