"""An OpenAI-compatible server over a base model and its LoRA adapters (`python -m shaping.serve`).

The server itself (`shaping.serve.app`, `shaping.serve.models`) imports the model stack; this
package's root only re-exports `running_server`, which starts one in a subprocess, so a process that
only launches a server imports none of it."""

from shaping.serve.launch import running_server

__all__ = ["running_server"]
