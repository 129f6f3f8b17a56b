"""Fine-tuning: the hf_peft backend (TRL + PEFT), SFT tokenization, launch, checkpoints and export."""
