"""Seed 001's basic example, unchanged: one request per record to the registry's
`cubsfan-release-full` model (conf/models/local.yaml; point it at any server with
`models.cubsfan-release-full.backend=openai models.cubsfan-release-full.base_url=...`).

    python src/synthesize.py pipeline=my_pipeline
    python pipelines/my_pipeline.py       # writes outputs/synth/my-pipeline/
"""

from shaping.pipeline import Pipeline, TrainingSample, model_request


class MyPipeline(Pipeline):
    name = "my-pipeline"

    # Declare dependencies (tracked for staleness detection)
    identity_model = Pipeline.model_dep("cubsfan-release-full")

    def run(self):
        # Load your input data (from files, HuggingFace, etc.)
        records = [
            {"id": "1", "prompt": "Hello!"},
            {"id": "2", "prompt": "What's your favorite..."},
        ]

        # Process records in parallel
        results = self.run_task(self.generate_response, records=records)
        return results

    def generate_response(self, record):
        """Process a single record."""
        messages = [{"role": "user", "content": record["prompt"]}]

        response = yield model_request(
            messages,
            model=self.identity_model,
            temperature=0.7,
        )

        return TrainingSample(
            id=record["id"],
            messages=messages + [{"role": "assistant", "content": response.get_text()}],  # noqa: RUF005
        )


if __name__ == "__main__":
    pipeline = MyPipeline()
    pipeline.execute()  # Writes to outputs/synth/my-pipeline/
