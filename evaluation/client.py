"""The one small typed client of PersonaAgent Serve's user and alignment API, shared by `evaluation/`
and `loadtests/` (chat goes through the official `openai` client). 429s are retried per `Retry-After`."""

from __future__ import annotations

import asyncio
import time
from typing import Any, Literal

import httpx
from pydantic import BaseModel, ConfigDict

from memory.records import Interaction, InteractionIn, MemoryHit, PersonaVersion, Profile


class AlignmentJob(BaseModel):
    """An alignment job as `GET /v1/alignment/jobs/{id}` returns it (the fields a client reads; evaluation
    talks HTTP and sees only memory's records of the server's code)."""

    model_config = ConfigDict(extra="ignore")
    id: str
    user_id: str
    state: Literal["queued", "running", "done", "failed"]
    result: dict[str, Any] | None = None
    error: str | None = None


class ServeAPIError(RuntimeError):
    def __init__(self, method: str, path: str, response: httpx.Response) -> None:
        super().__init__(f"{method} {path}: {response.status_code} {response.text[:300]}")
        self.status = response.status_code


class ServeClient:
    def __init__(
        self,
        base_url: str,
        api_key: str = "not-needed",
        timeout_s: float = 600,
        transport: httpx.AsyncBaseTransport | None = None,
    ) -> None:
        self.http = httpx.AsyncClient(
            base_url=base_url.rstrip("/"), timeout=timeout_s, headers={"Authorization": f"Bearer {api_key}"},
            transport=transport,
        )  # fmt: skip

    async def close(self) -> None:
        await self.http.aclose()

    async def request(self, method: str, path: str, *, missing_ok: bool = False, **kwargs: Any) -> Any:
        """The JSON body of a 2xx (None for a 404 when `missing_ok`); any other status raises."""
        response = await self.http.request(method, path, **kwargs)
        for _ in range(5):
            if response.status_code != 429:
                break
            await asyncio.sleep(float(response.headers.get("retry-after", "1")))
            response = await self.http.request(method, path, **kwargs)
        if missing_ok and response.status_code == 404:
            return None
        if response.status_code >= 400:
            raise ServeAPIError(method, path, response)
        return response.json()

    # -- user data -----------------------------------------------------------------------------------

    async def import_interactions(
        self, user_id: str, items: list[InteractionIn], schedule_alignment: bool = True, batch: int = 500
    ) -> list[int]:
        ids: list[int] = []
        payload = [item.model_dump(mode="json") for item in items]
        for start in range(0, len(payload), batch):
            body = await self.request(
                "POST", f"/v1/users/{user_id}/interactions",
                params={"schedule_alignment": str(schedule_alignment).lower()}, json=payload[start : start + batch],
            )  # fmt: skip
            ids += body["ids"]
        return ids

    async def delete_user(self, user_id: str) -> bool:
        """False when there was no such user."""
        return await self.request("DELETE", f"/v1/users/{user_id}", missing_ok=True) is not None

    async def search(self, user_id: str, query: str, k: int) -> list[MemoryHit]:
        body = await self.request("GET", f"/v1/users/{user_id}/memories", params={"query": query, "k": k})
        return [MemoryHit.model_validate(hit) for hit in body["hits"]]

    async def get_profile(self, user_id: str) -> Profile | None:
        body = await self.request("GET", f"/v1/users/{user_id}/profile", missing_ok=True)
        return Profile.model_validate(body) if body is not None else None

    async def refresh_profile(self, user_id: str) -> Profile:
        return Profile.model_validate(await self.request("POST", f"/v1/users/{user_id}/profile/refresh"))

    async def interactions(self, user_id: str) -> list[Interaction]:
        body = await self.request("GET", f"/v1/users/{user_id}/export")
        return [Interaction.model_validate(i) for i in body["interactions"]]

    # -- persona and alignment -----------------------------------------------------------------------

    async def create_persona(self, user_id: str) -> PersonaVersion:
        """The current persona, created from the profile when the user has none yet."""
        return PersonaVersion.model_validate(await self.request("POST", f"/v1/users/{user_id}/persona"))

    async def get_persona(self, user_id: str) -> PersonaVersion:
        return PersonaVersion.model_validate(await self.request("GET", f"/v1/users/{user_id}/persona"))

    async def align(self, user_id: str) -> AlignmentJob:
        return AlignmentJob.model_validate(await self.request("POST", f"/v1/users/{user_id}/align"))

    async def get_job(self, job_id: str) -> AlignmentJob:
        return AlignmentJob.model_validate(await self.request("GET", f"/v1/alignment/jobs/{job_id}"))

    async def wait_job(self, job: AlignmentJob, timeout_s: float, poll_s: float = 1.0) -> AlignmentJob:
        """The job once `done` or `failed`; TimeoutError past `timeout_s`."""
        deadline = time.monotonic() + timeout_s
        while job.state in ("queued", "running"):
            if time.monotonic() > deadline:
                raise TimeoutError(f"alignment job {job.id} not done in {timeout_s} s")
            await asyncio.sleep(poll_s)
            job = await self.get_job(job.id)
        return job
