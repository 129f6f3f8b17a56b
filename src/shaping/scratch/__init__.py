"""From scratch: the corpus, tokenizers trained on it, small LMs of any family pretrained on it, and
the tools that generate from and score a pretrained run. The tokenizer, pretrain and prepare_base
stages use this package; fine-tuning (shaping.training) starts from what prepare_base leaves."""
