"""Tinker (Thinking Machines' hosted LoRA service) through its `tinker` SDK.

    client      the API key, the SDK import, the service client, the reference a training run leaves
    renderers   conversations to prompt tokens and replies back (the model's chat template or the cookbook's)
    sampling    `backend: tinker` of the model registry (synthesis, judges)
    supervised  conversations to training tokens and loss weights (the SFT tokenization hf_peft uses)
    training    `backend=tinker` of the train stage
    evaluation  eval.metrics for a Tinker-trained run

The SDK (extra `shaping[tinker]`) is imported only when a Tinker model is used; the API key is read
from TINKER_API_KEY by the SDK itself and never passed, logged or written. Each module is imported by
the stage that uses it, so editing the training module stales `train` only.
"""
