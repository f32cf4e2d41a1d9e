"""`lpt train`: SFT then DPO of a vision-language model on the exported traces, with TRL."""
