"""Training: one module per method (SFT, DPO, GRPO) and their rewards, what they share (trainer
arguments, LoRA config, callbacks, forgetting_kl), base-model resolution, replay, guidance and the
launch in one or many processes. Plain Python; no orchestrator imports."""
