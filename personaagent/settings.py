"""The one settings object: configs/*.yaml, overridden by PERSONAAGENT_* environment variables.

Precedence (highest first): constructor arguments, environment (`PERSONAAGENT_ENGINE__MAX_MODEL_LEN=2048`),
the YAML file named by `PERSONAAGENT_CONFIG` (default `configs/cpu.yaml`), field defaults.
"""

from __future__ import annotations

import os
from enum import IntEnum
from pathlib import Path
from typing import Any, Literal

from pydantic import BaseModel, Field, SecretStr, field_validator, model_validator
from pydantic_settings import (
    BaseSettings,
    PydanticBaseSettingsSource,
    SettingsConfigDict,
    YamlConfigSettingsSource,
)

REPO_ROOT = Path(__file__).resolve().parent.parent
DEFAULT_CONFIG = REPO_ROOT / "configs" / "cpu.yaml"
EMBEDDED_MODEL = "embedded:smollm2-135m-instruct"


class EngineAutoscaling(BaseModel):
    """Ray Serve autoscaling of the engine deployment (replaces `num_replicas` when set)."""

    min_replicas: int = Field(1, ge=0)
    max_replicas: int = Field(4, ge=1)
    target_ongoing_requests: float = Field(32, gt=0, description="per replica; vLLM batches continuously")
    upscale_delay_s: float = Field(30, ge=0)
    downscale_delay_s: float = Field(600, ge=0)


RequestRouter = Literal["default", "prefix_affinity", "consistent_hash"]
# The implementation module of `ray.serve.llm.request_router.PrefixCacheAffinityRouter`: the public path
# imports all of Ray Serve LLM, which needs pyarrow (~40 MB) for nothing else here. Ray is pinned.
REQUEST_ROUTER_CLASSES: dict[str, str] = {
    "prefix_affinity": "ray.llm._internal.serve.routing_policies.prefix_aware.prefix_aware_router.PrefixCacheAffinityRouter",
    "consistent_hash": "ray.serve.experimental.consistent_hash_router.ConsistentHashRouter",
}


class EngineSettings(BaseModel):
    """vLLM engine. `model` is a local path, a hub id the operator has cached, or the embedded default."""

    model: str = EMBEDDED_MODEL
    served_model_name: str = "smollm2-135m-instruct"
    device: Literal["cpu", "gpu"] = "cpu"
    dtype: str = "bfloat16"
    max_model_len: int = Field(4096, ge=256)
    max_num_seqs: int = Field(64, ge=1)
    max_num_batched_tokens: int | None = None
    enable_prefix_caching: bool = True
    block_size: int | None = None
    gpu_memory_utilization: float = Field(0.90, gt=0, le=1)
    tensor_parallel_size: int = Field(1, ge=1)
    cpu_kvcache_space_gib: int = Field(2, ge=1)
    seed: int = 0
    num_replicas: int = Field(1, ge=1)
    autoscaling: EngineAutoscaling | None = None
    request_router: RequestRouter = Field(
        "default",
        description="how requests pick an engine replica: Ray Serve's default (power of two choices), "
        "Ray Serve LLM's PrefixCacheAffinityRouter, or the consistent-hash router keyed on the user",
    )
    request_router_kwargs: dict[str, Any] = Field(default_factory=dict)
    tool_call_parser: str = Field(
        "hermes",
        description="vLLM tool parser of the model family (`hermes` for Qwen2.5-style <tool_call>, `mistral` "
        "for Mistral-Small); with `hermes`, vLLM >= 0.31 holds calls to their schema with a structural tag "
        "(`--tool-strict-level parameter`); no vLLM release has one for `mistral`, so there vLLM does not",
    )
    tools_in_template: bool = Field(
        False,
        description="the model's chat template renders `tools` (Qwen2.5, Mistral-Small); false (SmolLM2): "
        "the agent writes the Hermes tool block into the system prompt itself",
    )
    extra_engine_args: dict[str, Any] = Field(default_factory=dict)


class ServerSettings(BaseModel):
    host: str = "127.0.0.1"
    port: int = Field(8000, ge=1, le=65535)
    max_body_bytes: int = Field(1_000_000, ge=1024)
    max_messages: int = Field(256, ge=1)
    max_message_chars: int = Field(100_000, ge=1, description="per message content; longer is 400")
    max_tokens: int | None = Field(
        None, ge=1, description="cap on a request's max_tokens (None: the context)"
    )
    max_n: int = Field(
        8, ge=1, description="choices per chat request (`n`); more is 400: each choice is a full generation"
    )
    max_prompts: int = Field(
        16,
        ge=1,
        description="prompts per /v1/completions request; more is 400: each prompt (times `n`) is a generation",
    )
    max_inflight_requests: int = Field(
        64,
        ge=1,
        description="per ingress replica; beyond it 429 with Retry-After (health and metrics exempt)",
    )
    max_inflight_share_per_key: float = Field(
        0.5,
        gt=0,
        le=1,
        description="share of max_inflight_requests one API key may hold; past it that key gets 429 "
        "while other keys still get in (no keys configured: no per-key bound)",
    )
    retry_after_s: int = Field(1, ge=1)
    ingress_replicas: int = Field(1, ge=1)
    health_timeout_s: float = Field(3.0, gt=0)
    metrics_timeout_s: float = Field(
        5.0,
        gt=0,
        description="how long /metrics waits for each deployment's replicas; one that has not answered by "
        "then is missing from that scrape (personaagent_metrics_collect_errors)",
    )
    shutdown_timeout_s: float = Field(
        8.0,
        gt=0,
        description="on SIGTERM/SIGINT, how long Serve may drain before the stack is stopped regardless",
    )
    throughput_optimized: bool = Field(False, description="Ray Serve's RAY_SERVE_THROUGHPUT_OPTIMIZED mode")
    proxy_location: Literal["EveryNode", "HeadOnly"] = Field(
        "EveryNode",
        description="where Ray Serve runs HTTP proxies (`personaagent serve`): every node with a replica, or "
        "the head only (several Ray nodes on one host, which would all bind server.port)",
    )


class MemorySettings(BaseModel):
    """Episodic (FAISS) and semantic (profile) memory, and the user data API's limits."""

    db_filename: str = "personaagent.db"
    device: Literal["auto", "cpu", "gpu"] = "auto"
    default_k: int = Field(4, ge=1)
    max_k: int = Field(50, ge=1)
    max_import_items: int = Field(1000, ge=1)
    max_input_chars: int = Field(20_000, ge=1)
    max_query_chars: int = Field(4_000, ge=1)
    embed_batch_size: int = Field(64, ge=1)
    search_batch_size: int = Field(32, ge=1)
    batch_wait_s: float = Field(0.002, ge=0)
    profile_refresh_every: int = Field(20, ge=1, description="refresh the profile after N new interactions")
    profile_max_words: int = Field(80, ge=10)
    profile_max_input_chars: int = Field(4000, ge=200)
    profile_on_import: bool = True
    max_items_per_user: int = Field(
        100_000,
        ge=1,
        description="stored interactions per user; an import past it gets 413, a chat write-back is dropped",
    )
    max_bytes_per_user: int = Field(
        50_000_000, ge=1_000, description="UTF-8 bytes of stored inputs and outputs per user (same rule)"
    )
    max_persona_versions: int = Field(
        50, ge=1, description="persona versions kept per user (oldest go first)"
    )
    max_profile_versions: int = Field(
        10, ge=1, description="profile versions kept per user (oldest go first)"
    )
    persona_profile_wait_s: float = Field(
        2.0,
        ge=0,
        description="how long a user's first chat waits for their profile; past it (or when the profile "
        "write fails) the chat answers with a transient profile-less persona, stored nothing",
    )
    index_cache_users: int = Field(
        10_000,
        ge=1,
        description="users whose episodic index stays in RAM (least recently used evicted; an evicted "
        "user's index reloads from the stored embeddings on their next search)",
    )
    num_replicas: int = Field(
        1,
        ge=1,
        description="memory replicas; more than 1 needs store.url (PostgreSQL): any replica serves any user, "
        "its FAISS indexes a cache checked against the user's version on every search",
    )
    request_router: Literal["default", "consistent_hash"] = Field(
        "consistent_hash",
        description="how a request picks a memory replica: by a hash of the user's cache salt (one user's "
        "requests go to one replica, whose cache holds their index; correctness never depends on it), or Ray "
        "Serve's default (power of two choices)",
    )
    num_cpus: float = Field(0.5, ge=0, description="Ray logical CPUs reserved per memory replica")
    max_replicas_per_node: int | None = Field(
        None, ge=1, description="at most this many memory replicas on one Ray node (1: one per node)"
    )
    placement_resource: str | None = Field(
        None,
        description="SQLite only: Ray custom resource of the node that mounts data_dir (e.g. the head pod "
        "with the PersistentVolumeClaim); the memory and alignment deployments are placed there. Ignored "
        "(with a warning) when store.url is set: their replicas then run on any node",
    )


class EmbeddingsSettings(BaseModel):
    """`/v1/embeddings`, answered by the memory deployment's encoder (all-MiniLM-L6-v2, 384 dimensions)."""

    served_model_name: str = Field("all-MiniLM-L6-v2", description="the model id clients name")
    max_inputs: int = Field(2048, ge=1, description="inputs per request (OpenAI's own limit); more is 400")
    max_input_chars: int = Field(
        10_000, ge=1, description="characters (or token ids) per input; more is 400, before any tokenizing"
    )
    truncate: bool = Field(
        False,
        description="false: an input past the encoder's 256 tokens is 400 (as OpenAI and vLLM answer); "
        "true: it is cut at 256 tokens, as the memory layer's own embeddings are",
    )
    batch_size: int = Field(
        16, ge=1, description="requests whose inputs share one encoder call (the memory deployment's serve.batch)"
    )


class Priority(IntEnum):
    """vLLM request priorities, lower first (the engine runs with `--scheduling-policy priority`).

    Background work (alignment, explicit or post-import profile refreshes) runs at `alignment.priority`;
    BACKGROUND is its default. The engine's background gate holds back requests at or past that level.
    """

    CHAT = 0
    PROFILE_FOR_CHAT = 1  # a first chat waits for its profile: not held back like background work
    BACKGROUND = 10


class AgentSettings(BaseModel):
    """PersonaAgent core: persona and the action module."""

    max_steps: int = Field(
        3, ge=0, le=10, description="generation rounds per request that may run a built-in tool"
    )
    memory_k: int = Field(4, ge=1, le=50)
    document_k: int = Field(3, ge=1, le=20)
    tool_round_max_tokens: int = Field(
        128,
        ge=16,
        description="token budget of a tool round that must write a call (forced, or again after the "
        "request's max_tokens cut a call off) when max_tokens is smaller; answers stay within max_tokens",
    )
    observation_chars: int = Field(1200, ge=100, description="per tool result, in the prompt")
    trace_result_chars: int = Field(200, ge=20, description="per tool result, in the response trace")
    auto_memory_search: bool = Field(
        True,
        description="retrieve the user's memories for the request before generating (no LLM call): even a "
        "small model then answers with the user's own history in view; the model may still search itself",
    )
    max_persona_chars: int = Field(6000, ge=200)
    max_documents_per_load: int = Field(10_000, ge=1)
    write_back: bool = True
    trace_final_prompt: bool = Field(
        False, description="include the final prompt in persona_agent (benchmarks, debugging)"
    )


class AlignmentSettings(BaseModel):
    """Test-time alignment (textual-gradient persona optimization) and its actor pool."""

    n: int = Field(3, ge=1, le=20, description="latest interactions with ground truth per alignment")
    iterations: int = Field(1, ge=1, le=5)
    due_every: int = Field(3, ge=1, description="K: a user becomes due after K new ground truths")
    schedule_on_import: bool = True
    gate: bool = True
    pool_size: int = Field(2, ge=1, description="Ray actors in the alignment pool")
    round_size: int = Field(64, ge=1, description="users gathered into one round")
    round_wait_s: float = Field(
        0.5,
        ge=0,
        le=60,
        description="an idle queue waits this long after its first job before starting a round, so jobs "
        "queued together (a batch of forced alignments, an import) form one round instead of a round of "
        "the first job and a second one that waits for it (as Ray Serve's `batch_wait_timeout_s`)",
    )
    max_inflight_calls: int = Field(32, ge=1, description="cap on concurrent engine calls per pool actor")
    priority: int = Field(
        Priority.BACKGROUND,
        description="vLLM request priority of background work: alignment calls and profile refreshes "
        "(chat: 0; lower first)",
    )
    yield_to_chat: bool = Field(
        True, description="engine replicas hold back new alignment calls while chat runs on them"
    )
    inflight_calls_during_chat: int = Field(
        2, ge=1, description="alignment calls per engine replica while chat runs (and chat_quiet_s after)"
    )
    chat_quiet_s: float = Field(
        2.0, ge=0, description="seconds after the last chat before alignment goes back to its idle limit"
    )
    max_engine_share: float = Field(
        0.5, gt=0, le=1, description="share of an engine replica's max_num_seqs alignment may hold when idle"
    )
    answer_max_tokens: int = Field(64, ge=1)
    update_max_tokens: int = Field(400, ge=32, description="budget of the persona rewrite")
    persona_max_words: int = Field(250, ge=20)
    allow_fault_injection: bool = Field(
        False,
        description="tests only: POST /align?inject_failure_after=N (the failure is injected when the "
        "alignment replica that queued the job runs it, which it does unless it dies first)",
    )
    num_replicas: int = Field(
        1,
        ge=1,
        description="alignment replicas (schedulers, each with its actor pool) claiming from the shared job "
        "queue; more than 1 needs store.url (PostgreSQL)",
    )
    num_cpus: float = Field(0.25, ge=0, description="Ray logical CPUs reserved per alignment replica")
    max_replicas_per_node: int | None = Field(
        None, ge=1, description="at most this many alignment replicas on one Ray node"
    )
    job_timeout_s: float = Field(
        1800,
        gt=0,
        description="an alignment job not done by then ends `failed` (its user may be queued again)",
    )
    job_retention_days: float = Field(
        30, gt=0, description="finished alignment jobs (with their answers and candidates) are kept this long"
    )


class APIKeySetting(BaseModel):
    """One API key, stored as its SHA-256 (`personaagent keys new` prints a key and this entry)."""

    name: str = Field(min_length=1, description="who holds it (shows in logs, never the key)")
    sha256: str = Field(pattern=r"^[0-9a-f]{64}$")
    user_id: str | None = Field(None, description="set: the key acts only as this user; unset: admin")


class AuthSettings(BaseModel):
    api_keys: list[APIKeySetting] = Field(default_factory=list, description="none: open, loopback only")
    metrics_open: bool = Field(True, description="false: /metrics needs a key too")
    allow_open: bool = Field(
        False,
        description="serve with no API keys on a non-loopback address anyway (on purpose: e.g. behind an "
        "authenticating proxy); otherwise `personaagent serve` and `serving.app:app_builder` refuse to start",
    )
    cache_salt_secret: SecretStr | None = Field(
        None,
        min_length=16,
        description="HMAC key of every vLLM cache salt (personaagent.salts); unset: generated once into "
        "data_dir/cache_salt.key (mode 0600). Keep it secret: whoever knows it can derive any user's salt.",
    )


class StoreSettings(BaseModel):
    """Where the state lives: SQLite files under data_dir (empty url), or one PostgreSQL database that every
    memory and alignment replica shares (`PERSONAAGENT_STORE__URL=postgresql://user:pass@host/db`)."""

    url: SecretStr = Field(
        SecretStr(""),
        description="empty: SQLite under data_dir; postgresql://...: users, interactions, profiles, personas, "
        "documents, tombstones and alignment jobs in that database (a secret: never logged)",
    )
    pool_min_size: int = Field(1, ge=0, description="connections each pool keeps open")
    pool_max_size: int = Field(
        8, ge=1, description="connections per pool (one pool per memory replica, one per alignment replica)"
    )
    connect_timeout_s: float = Field(
        10, gt=0, description="how long a start waits for the database, and a request for a free connection"
    )
    job_lease_s: float = Field(
        60,
        ge=1,
        description="an alignment job's lease: its worker renews it while the job runs; a job whose worker "
        "died is claimable again once the lease ran out",
    )
    job_max_attempts: int = Field(
        3, ge=1, description="claims of one job before it ends `failed` (a job that kills its worker)"
    )

    @field_validator("url")
    @classmethod
    def _postgres_url(cls, value: SecretStr) -> SecretStr:
        url = value.get_secret_value()
        if url and not url.startswith(("postgresql://", "postgres://")):
            raise ValueError("store.url: empty (SQLite) or a postgresql:// URL")
        return value

    @model_validator(mode="after")
    def _pool_bounds(self) -> StoreSettings:
        if self.pool_min_size > self.pool_max_size:
            raise ValueError("store.pool_min_size must not exceed store.pool_max_size")
        return self

    @property
    def postgres(self) -> bool:
        return bool(self.url.get_secret_value())


class RaySettings(BaseModel):
    # Logical CPUs advertised to Ray: deployments reserve them for placement, vLLM's threads do the work.
    num_cpus: int = Field(8, ge=1)
    address: str | None = None


class Settings(BaseSettings):
    model_config = SettingsConfigDict(env_prefix="PERSONAAGENT_", env_nested_delimiter="__", extra="forbid")

    data_dir: Path = REPO_ROOT / "data"
    model_cache_dir: Path = REPO_ROOT / ".cache" / "models"
    engine: EngineSettings = Field(default_factory=EngineSettings)
    server: ServerSettings = Field(default_factory=ServerSettings)
    memory: MemorySettings = Field(default_factory=MemorySettings)
    embeddings: EmbeddingsSettings = Field(default_factory=EmbeddingsSettings)
    agent: AgentSettings = Field(default_factory=AgentSettings)
    alignment: AlignmentSettings = Field(default_factory=AlignmentSettings)
    auth: AuthSettings = Field(default_factory=AuthSettings)
    store: StoreSettings = Field(default_factory=StoreSettings)
    ray: RaySettings = Field(default_factory=RaySettings)

    @model_validator(mode="after")
    def _replicas_need_a_shared_store(self) -> Settings:
        """SQLite is one file with one owner: more replicas of a deployment that writes it need PostgreSQL."""
        if not self.store.postgres:
            for name, replicas in (
                ("memory", self.memory.num_replicas),
                ("alignment", self.alignment.num_replicas),
            ):
                if replicas > 1:
                    raise ValueError(
                        f"{name}.num_replicas is {replicas}, but the state is in SQLite under data_dir, which "
                        f"one {name} replica owns: set store.url (PERSONAAGENT_STORE__URL=postgresql://...) "
                        f"to share it, or {name}.num_replicas: 1"
                    )
        return self

    @classmethod
    def settings_customise_sources(
        cls,
        settings_cls: type[BaseSettings],
        init_settings: PydanticBaseSettingsSource,
        env_settings: PydanticBaseSettingsSource,
        dotenv_settings: PydanticBaseSettingsSource,
        file_secret_settings: PydanticBaseSettingsSource,
    ) -> tuple[PydanticBaseSettingsSource, ...]:
        explicit = settings_cls.model_config.get("yaml_file")
        config_path = explicit or Path(os.environ.get("PERSONAAGENT_CONFIG", DEFAULT_CONFIG))
        yaml_source = YamlConfigSettingsSource(settings_cls, yaml_file=config_path)
        return (init_settings, env_settings, yaml_source)


def load_settings(config: str | Path | None = None, **overrides: Any) -> Settings:
    """Load settings from `config` (or $PERSONAAGENT_CONFIG) plus environment and overrides."""
    if config is None:
        return Settings(**overrides)
    path = Path(config)
    if not path.is_absolute() and not path.is_file():
        # Ray Serve replicas (and KubeRay's serveConfigV2 args) may run from another directory.
        path = REPO_ROOT / path
    if not path.is_file():
        raise FileNotFoundError(f"config file not found: {config}")

    class FileSettings(Settings):
        model_config = SettingsConfigDict(yaml_file=path.resolve())

    # Return the base class so the object pickles into Ray replicas without the local subclass.
    return Settings.model_validate(FileSettings(**overrides).model_dump())
