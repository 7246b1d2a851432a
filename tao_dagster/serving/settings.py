"""How `tao-dagster serve` runs: where it listens, the model name applications use, and how it logs and switches."""

from pydantic import BaseModel, Field

API_KEY_VARIABLE = "TAO_SERVE_API_KEY"  # read from the environment only: a credential is never a setting's value


class ServeSettings(BaseModel):
    model_name: str = Field(
        "", description="The stable model name applications send and /v1/models lists; '' gives tao-<domain name> (TAO_SERVE_MODEL)."
    )
    host: str = Field("127.0.0.1", description="Address the endpoint listens on; 0.0.0.0 for every interface (TAO_SERVE_HOST).")
    port: int = Field(8000, description="Port of the OpenAI-compatible endpoint (TAO_SERVE_PORT).")
    add_instruction: bool = Field(
        True,
        description="Applications send the conversation alone, as the logs hold it; the server puts the domain's instruction "
        "into the last user turn (the plain template), as training and evaluation do. Off: requests reach the model as sent "
        "(TAO_SERVE_ADD_INSTRUCTION).",
    )
    poll_seconds: float = Field(
        30.0, description="How often the MLflow registry is asked whether the champion changed (TAO_SERVE_POLL_SECONDS)."
    )
    rotate_bytes: int = Field(
        16 * 2**20, description="A log file is closed and handed to the sensor once it holds this many bytes (TAO_SERVE_ROTATE_BYTES)."
    )
    rotate_seconds: float = Field(
        900.0,
        description="... or once its first line is this many seconds old (TAO_SERVE_ROTATE_SECONDS): each closed file is one "
        "log_files partition and one scoring run.",
    )
    start_timeout_seconds: float = Field(
        600.0, description="A new backend that is not healthy after this long is stopped; the old one serves on."
    )
    drain_seconds: float = Field(
        300.0, description="After a switch, how long requests in flight on the old backend may take before it is stopped."
    )

    def served_name(self, domain_name: str) -> str:
        return self.model_name or f"tao-{domain_name}"
