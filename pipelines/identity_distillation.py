"""Context distillation of an identity: the teacher is the base model *with* the identity
document as its system prompt (the registry's `teacher`); each sample keeps the prompt and
the teacher's reply but drops the system prompt, so tuning teaches the student to answer as
the identity without being told to. The base model's own reply to the same prompt (no system
prompt: the registry's `base`) is kept as `rejected`, so the same samples are preference pairs
for DPO (train=dpo): prefer the identity's answer over the base's.

    python src/synthesize.py pipeline=identity_distillation synth.limit=20
    python pipelines/identity_distillation.py       # writes outputs/synth/identity_distillation/
"""

from __future__ import annotations

from typing import Any

from shaping.pipeline import Pipeline, PipelineError, TrainingSample, model_request


def quotes(reply: str, document: str, span: int = 12) -> bool:
    """Whether `reply` repeats `span` consecutive words of `document` (a teacher echoing its system prompt:
    a tiny model sometimes writes its persona prompt back instead of answering)."""
    words = document.split()
    return any(" ".join(words[i : i + span]) in reply for i in range(len(words) - span + 1))


class IdentityDistillation(Pipeline):
    name = "identity_distillation"

    teacher = Pipeline.model_dep("teacher")
    base = Pipeline.model_dep("base")  # the student before tuning: no identity
    identity = Pipeline.file_dep("data/identity/identity.md")  # the teacher's system prompt
    prompts = Pipeline.file_dep("data/identity/prompts")  # one user prompt per line, *.txt

    def run(self) -> list[TrainingSample]:
        records = []
        for path in self.prompts.paths():
            lines = [line.strip() for line in path.read_text(encoding="utf-8").splitlines()]
            for n, prompt in enumerate(line for line in lines if line):
                records.append({"id": f"{path.stem}-{n:03d}", "prompt": prompt})
        return self.run_task(self.distill, records=records)

    def distill(self, record: dict[str, Any]) -> Any:
        messages = [{"role": "user", "content": record["prompt"]}]
        taught, untaught = yield [model_request(messages, model=self.teacher), model_request(messages, model=self.base)]
        reply = taught.get_text().strip()
        if not reply:
            raise PipelineError("the teacher's reply is empty", error_type="empty_response")
        if quotes(reply, self.identity.read()):  # the rule of tests/data/test_identity_contract.py
            raise PipelineError("the teacher's reply quotes 12+ words of its system prompt", error_type="prompt_echo")
        rejected = untaught.get_text().strip()
        return TrainingSample(
            id=record["id"],
            messages=[*messages, {"role": "assistant", "content": reply}],
            rejected=rejected or None,  # an empty base reply: the row still trains SFT, DPO skips it
        )


if __name__ == "__main__":
    IdentityDistillation().execute()
