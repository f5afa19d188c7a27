"""The one settings object: every knob treadle has, read from ``TREADLE_*`` variables."""

from __future__ import annotations

import os
from collections.abc import Mapping
from functools import lru_cache
from pathlib import Path
from typing import Literal

from pydantic import Field, SecretStr, model_validator
from pydantic_settings import BaseSettings, SettingsConfigDict

from config.redis_endpoint import settings_problem

DEFAULT_TOPOLOGY = Path(__file__).with_name("topology.yaml")


class Settings(BaseSettings):
    """treadle's configuration. Unknown ``TREADLE_*`` names are refused, not ignored."""

    # hide_input_in_errors: a refused setting's error must not echo the Redis password.
    model_config = SettingsConfigDict(
        env_prefix="TREADLE_", extra="forbid", frozen=True, hide_input_in_errors=True
    )

    redis_url: str | None = Field(
        default=None,
        # Never in a repr: it may carry the Redis password.
        repr=False,
        description="Broker, result backend and state store: redis://, rediss:// (TLS) or "
        "sentinel://h:26379;sentinel://h2:26379 (see config/redis_endpoint.py). "
        "Unset: a private embedded Redis.",
    )
    redis_sentinel_master: str | None = Field(
        default=None,
        description="With a sentinel:// URL: the name the sentinels monitor the primary by.",
    )
    redis_sentinel_password: SecretStr | None = Field(
        default=None,
        description="Password of the sentinels themselves, if they require one (the "
        "primary's goes in the URL).",
    )
    redis_tls_cert_reqs: Literal["required", "optional", "none"] = Field(
        default="required",
        description="With a rediss:// URL: check the server's certificate (and host name) "
        "against the CA file or the system's CAs: required; none turns checking off.",
    )
    redis_tls_ca_file: Path | None = Field(
        default=None, description="With a rediss:// URL: the CA certificates (PEM) to trust."
    )
    redis_tls_cert_file: Path | None = Field(
        default=None, description="With a rediss:// URL: this client's certificate (PEM)."
    )
    redis_tls_key_file: Path | None = Field(
        default=None, description="With a rediss:// URL: this client's private key (PEM)."
    )
    home: Path = Field(
        default=Path(".treadle"), description="Where the embedded Redis keeps its data and URL."
    )
    topology: Path = Field(default=DEFAULT_TOPOLOGY, description="Pools, resources, admission.")
    task_modules: str = Field(
        default="", description="Comma-separated modules that define @task functions."
    )
    key_prefix: str = Field(default="treadle", description="Prefix of every treadle Redis key.")
    redis_appendfsync: Literal["always", "everysec"] = Field(
        default="always",
        description="AOF fsync of the embedded Redis: always = an acknowledged write "
        "survives a crash; everysec = the last second of writes may be lost.",
    )
    redis_retry_s: float = Field(
        default=60.0,
        ge=0,
        description="How long a Redis call keeps retrying through a lost connection "
        "(a restart, a failover) before it gives up.",
    )

    max_steps: int = Field(default=20_000, ge=1, description="Steps per workflow.")
    max_params_bytes: int = Field(default=256 * 1024, ge=1, description="JSON size of params.")
    max_args_bytes: int = Field(
        default=64 * 1024, ge=1, description="JSON size of one step's args."
    )

    default_step_timeout_s: float = Field(default=300.0, gt=0)
    max_step_timeout_s: float = Field(default=3600.0, gt=0)
    visibility_timeout_s: float = Field(
        default=7200.0, gt=0, description="Redis redelivery window; must exceed every timeout."
    )
    result_expires_s: int = Field(default=7 * 24 * 3600, gt=0)
    state_ttl_s: int = Field(
        default=30 * 24 * 3600, gt=0, description="How long finished workflows stay in Redis."
    )

    sweep_interval_s: float = Field(
        default=5.0, gt=0, description="How often the orchestrator looks for stranded work."
    )
    recovery_after_s: float = Field(
        default=10.0, gt=0, description="A stored workflow not dispatched by then is stranded."
    )

    worker_lost_after_s: float = Field(
        default=30.0, gt=0, description="A worker without a heartbeat this long is dead."
    )
    stranded_message_after_s: float = Field(
        default=60.0,
        gt=0,
        description="Unacked this long, a message of a dead worker goes back on its queue.",
    )

    worker_max_tasks_per_child: int = Field(default=10_000, ge=0)
    inline_chain_s: float = Field(
        default=1.0,
        ge=0,
        description="How long a worker may go on running a chain's next steps itself, in "
        "line, before it publishes the rest (workers/inline.py); 0: every link through the "
        "broker.",
    )
    bundle_target_s: float = Field(
        default=0.05,
        ge=0,
        description="Steps of a short task that are queued together share messages, as "
        "many as fit in this much of its mean run time (orchestrator/bundles.py); 0: "
        "one message a step.",
    )
    bundle_max: int = Field(default=32, ge=1, description="The most steps one message carries.")
    task_events: bool = Field(
        default=False,
        description="Workers send Celery's task events from the start. Off, they send them "
        "only once a monitor asks (Flower does, `treadle up` starts it): three PUBLISH round "
        "trips per step that nothing reads otherwise.",
    )
    flower_port: int = Field(default=5555, ge=0, le=65535)
    flower_basic_auth: SecretStr | None = Field(
        default=None, description="user:password for Flower; `treadle up` makes one if unset."
    )

    api_port: int = Field(
        default=8080,
        ge=0,
        le=65535,
        description="Port of the HTTP API that `treadle up` serves (0: any free port; taken: "
        "another free one). `treadle orchestrator` serves it only with --port.",
    )
    api_host: str = Field(
        default="127.0.0.1",
        description="Address the HTTP API listens on (0.0.0.0 for every interface).",
    )
    api_token: SecretStr | None = Field(
        default=None,
        description="Bearer token the HTTP API requires (and the remote client sends); "
        "`treadle up` makes one if unset.",
    )
    api_auth: bool = Field(
        default=True,
        description="off: serve the HTTP API without a token, for local use only.",
    )
    api_max_body_bytes: int = Field(
        default=4 * 1024 * 1024,
        ge=1,
        description="Largest request body the HTTP API reads; larger ones get 413.",
    )
    api_url: str | None = Field(
        default=None,
        description="Set: the CLI and Client.from_settings() talk to this orchestrator's "
        "HTTP API instead of to Redis.",
    )
    api_timeout_s: float = Field(
        default=30.0, gt=0, description="How long the remote client waits for a reply."
    )

    @model_validator(mode="after")
    def _timeouts_fit_visibility(self) -> Settings:
        # A message unacked for longer than visibility_timeout is redelivered while the
        # first copy still runs: every hard timeout must end before that can happen.
        longest_hard = self.hard_limit_s(self.max_step_timeout_s)
        if self.visibility_timeout_s <= longest_hard:
            raise ValueError(
                f"visibility_timeout_s ({self.visibility_timeout_s}) must exceed the hard time "
                f"limit of the longest step ({longest_hard} s for max_step_timeout_s "
                f"{self.max_step_timeout_s})"
            )
        if self.default_step_timeout_s > self.max_step_timeout_s:
            raise ValueError("default_step_timeout_s must not exceed max_step_timeout_s")
        problem = settings_problem(self)
        if problem is not None:
            raise ValueError(problem)
        return self

    @staticmethod
    def hard_limit_s(soft_s: float) -> float:
        """The hard time limit behind a step's soft one: time for the task to clean up."""
        return soft_s + max(5.0, soft_s * 0.1)

    def task_module_list(self) -> list[str]:
        return [m.strip() for m in self.task_modules.split(",") if m.strip()]


def unknown_environment_names(environ: Mapping[str, str]) -> list[str]:
    """``TREADLE_*`` variables that name no setting: a typo must not be silently ignored."""
    known = {f"TREADLE_{name.upper()}" for name in Settings.model_fields}
    return sorted(k for k in environ if k.upper().startswith("TREADLE_") and k.upper() not in known)


@lru_cache(maxsize=1)
def get_settings() -> Settings:
    unknown = unknown_environment_names(os.environ)
    if unknown:
        raise ValueError(f"unknown settings in the environment: {', '.join(unknown)}")
    return Settings()
