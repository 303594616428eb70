"""Block flow matching: the training objective, the KV-cached sampler, REPA and preference losses."""
