"""Seed 001's full example, unchanged but for `parse_facts`, which the seed leaves to the
reader: a `query()` to the judge extracts facts from identity/NARRATIVE.md, then a two-step
task per fact asks the judge for a question and the identity model for the answer.

    python src/synthesize.py pipeline=identity_augmentation
    python pipelines/identity_augmentation.py       # writes outputs/synth/identity-augmentation/
"""

from shaping.pipeline import Pipeline, TrainingSample, model_request
from shaping.pipeline.api import ModelResponse


def parse_facts(response: ModelResponse) -> list[dict[str, str]]:
    """One fact per non-empty line of the judge's reply (list markers stripped)."""
    lines = [line.strip().lstrip("-*0123456789.) ").strip() for line in response.get_text().splitlines()]
    return [{"id": f"fact-{n:03d}", "fact": line} for n, line in enumerate(line for line in lines if line)]


class IdentityAugmentation(Pipeline):
    name = "identity-augmentation"

    # File dependency - tracked for staleness
    narrative_doc = Pipeline.file_dep("identity/NARRATIVE.md")

    # Model dependencies
    identity_model = Pipeline.model_dep("cubsfan-release-full")
    judge_model = Pipeline.model_dep("judge")

    def run(self):
        # Stage 1: Single LLM call to extract facts from file
        doc_content = self.narrative_doc.read()
        facts_response = self.query(
            model=self.judge_model,
            messages=[{"role": "user", "content": f"Extract facts from:\n{doc_content}"}],
        )
        facts = parse_facts(facts_response)

        # Stage 2: Process facts in parallel
        results = self.run_task(self.generate_qa, records=facts)
        return results

    def generate_qa(self, record):
        """Generate Q&A for a single fact."""
        # Step 1: Generate question
        question = yield model_request(
            [{"role": "user", "content": f"Write a question about: {record['fact']}"}],
            model=self.judge_model,
        )

        # Step 2: Generate response
        response = yield model_request(
            [{"role": "user", "content": question.get_text()}],
            model=self.identity_model,
        )

        return TrainingSample(
            id=record["id"],
            messages=[
                {"role": "user", "content": question.get_text()},
                {"role": "assistant", "content": response.get_text()},
            ],
        )


if __name__ == "__main__":
    IdentityAugmentation().execute()
