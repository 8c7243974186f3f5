"""Shared response models and helpers of the routers."""

from __future__ import annotations

from typing import Any

from fastapi import Response
from pydantic import BaseModel, ConfigDict

from kvmops.services.jobs import JobView


class Body(BaseModel):
    """Base of every request body: unknown fields are an error, not ignored."""

    model_config = ConfigDict(extra="forbid")


class JobAccepted(BaseModel):
    job_id: str
    state: str
    kind: str
    target: str | None
    url: str


class Message(BaseModel):
    message: str
    details: dict[str, Any] | None = None


def accepted(job: JobView, response: Response) -> JobAccepted:
    """The 202 answer of a job-starting request."""
    response.status_code = 202
    url = f"/api/v1/jobs/{job.id}"
    response.headers["Location"] = url
    response.headers["X-Job-Id"] = job.id
    return JobAccepted(job_id=job.id, state=job.state, kind=job.kind, target=job.target,
                       url=url)
