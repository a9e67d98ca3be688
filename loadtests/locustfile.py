"""Locust load: personalized users who chat (streaming), sometimes give feedback, sometimes import history.

    python -m locust -f loadtests/locustfile.py --host http://127.0.0.1:8000 [--chat-weight 8 ...]
    python loadtests/run_locust.py ...   (headless, CSV + HTML reports, exit code from the failure ratio)

A streamed response's Locust time stops at the response headers, so time to first token is reported as
its own request type, `TTFT` (time to the first content chunk), and the whole stream as `STREAM`.
Only the standard library and Locust are imported here: Locust's workers are gevent processes.
"""

from __future__ import annotations

import json
import random
import time
import uuid
from typing import Any

from locust import HttpUser, between, events, task
from locust.env import Environment

TOPICS = ["hiking", "jazz", "espresso", "chess", "gardening", "sci-fi films", "marathons", "baking bread"]


@events.init_command_line_parser.add_listener
def _options(parser: Any) -> None:
    parser.add_argument("--model", default="", help="model name (default: the server's first model)")
    parser.add_argument("--api-key", default="", env_var="PERSONAAGENT_API_KEY", help="an admin key")
    parser.add_argument("--chat-weight", type=int, default=8)
    parser.add_argument("--feedback-weight", type=int, default=1)
    parser.add_argument("--import-weight", type=int, default=1)
    parser.add_argument("--max-tokens", type=int, default=32)
    parser.add_argument(
        "--history-items", type=int, default=6, help="interactions each user imports on start"
    )
    parser.add_argument("--max-fail-ratio", type=float, default=0.01, help="exit code 1 above this ratio")


@events.quitting.add_listener
def _exit_code(environment: Environment, **_: Any) -> None:
    ratio = environment.stats.total.fail_ratio
    limit = environment.parsed_options.max_fail_ratio if environment.parsed_options else 0.01
    chats = environment.stats.get("/v1/chat/completions", "POST").num_requests
    # Set either way: Locust's own default is 1 on any failure, which an overload run expects (429s).
    # A run that sent no chat at all measured nothing: that is no pass either.
    environment.process_exit_code = 1 if ratio > limit or chats == 0 else 0
    if ratio > limit:
        print(f"failure ratio {ratio:.3f} is above {limit}: exit code 1")
    elif chats == 0:
        print("no chat request was sent (run too short?): exit code 1")


def _history(n: int, topic: str) -> list[dict[str, str]]:
    return [{"input": f"Recommend something about {topic} (#{i})", "output": f"Something about {topic}."}
            for i in range(n)]  # fmt: skip


class PersonaUser(HttpUser):
    """One end user with their own agent: `user` is set on every chat."""

    wait_time = between(0.5, 2.0)

    def on_start(self) -> None:
        options = self.environment.parsed_options
        if options and options.api_key:
            self.client.headers["Authorization"] = f"Bearer {options.api_key}"
        self.model = options.model if options and options.model else self._served_model()
        self.max_tokens = options.max_tokens if options else 32
        self.user_id = f"locust-{uuid.uuid4().hex[:12]}"
        self.topic = random.choice(TOPICS)
        self.last_completion_id: str | None = None
        if options and options.history_items == 0:
            return
        self.client.post(
            f"/v1/users/{self.user_id}/interactions",
            json=_history(options.history_items if options else 6, self.topic),
            name="/v1/users/[id]/interactions",
        )

    def _served_model(self) -> str:
        with self.client.get("/v1/models", name="/v1/models", catch_response=True) as response:
            try:
                return str(response.json()["data"][0]["id"])
            except (ValueError, KeyError, IndexError):
                response.failure("no model listed")
                return "unknown"

    @task(8)
    def chat(self) -> None:
        body = {
            "model": self.model,
            "user": self.user_id,
            "stream": True,
            "max_tokens": self.max_tokens,
            "messages": [{"role": "user", "content": f"Any new ideas about {self.topic}?"}],
        }
        started = time.perf_counter()
        first_token_ms: float | None = None
        with self.client.post(
            "/v1/chat/completions", json=body, stream=True, catch_response=True, name="/v1/chat/completions"
        ) as response:
            if response.status_code != 200:
                response.failure(f"{response.status_code}: {response.text[:200]}")
                return
            try:
                for line in response.iter_lines(decode_unicode=True):
                    if not line or not line.startswith("data: ") or line == "data: [DONE]":
                        continue
                    chunk = json.loads(line[6:])
                    if "error" in chunk:
                        response.failure(f"stream error: {chunk['error']}")
                        return
                    self.last_completion_id = chunk.get("id", self.last_completion_id)
                    delta = (chunk.get("choices") or [{}])[0].get("delta") or {}
                    if first_token_ms is None and delta.get("content"):
                        first_token_ms = (time.perf_counter() - started) * 1000
            except Exception as exc:  # a cut stream is a failure of this request, not of the user
                response.failure(f"stream broken: {exc}")
                return
        total_ms = (time.perf_counter() - started) * 1000
        fire = self.environment.events.request.fire
        if first_token_ms is not None:
            fire(request_type="TTFT", name="chat first content", response_time=first_token_ms,
                 response_length=0, exception=None, context={})  # fmt: skip
        fire(request_type="STREAM", name="chat whole stream", response_time=total_ms,
             response_length=0, exception=None, context={})  # fmt: skip

    @task(1)
    def feedback(self) -> None:
        if self.last_completion_id is None:
            return
        self.client.post(
            f"/v1/users/{self.user_id}/feedback",
            json={
                "completion_id": self.last_completion_id,
                "expected_output": f"More about {self.topic}, please.",
            },
            name="/v1/users/[id]/feedback",
        )
        self.last_completion_id = None

    @task(1)
    def import_history(self) -> None:
        self.client.post(
            f"/v1/users/{self.user_id}/interactions",
            json=_history(2, self.topic),
            name="/v1/users/[id]/interactions",
        )


@events.init.add_listener
def _mix(environment: Environment, **_: Any) -> None:
    """Task weights from the command line (Locust reads weights from the class, so they are set here)."""
    options = environment.parsed_options
    if options is None:
        return
    PersonaUser.tasks = (
        [PersonaUser.chat] * options.chat_weight
        + [PersonaUser.feedback] * options.feedback_weight
        + [PersonaUser.import_history] * options.import_weight
    )
