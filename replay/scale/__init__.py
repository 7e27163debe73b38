"""Scale-out: one run's plan split into shards, run on local worker processes or Ray actors, and
merged back into one results directory. The runner below knows nothing of it."""
