"""``GET /v1/limits``: the formats and limits this server accepts, so the web page and the CLI offer the same."""

from __future__ import annotations

from fastapi import APIRouter
from pydantic import BaseModel, Field

from api.deps import AppSettings
from api.jobs.listing import MAX_PAGE_SIZE
from shared.intake.uploads import IMAGE_FILE_SUFFIXES, IMAGE_MEDIA_TYPES

router = APIRouter(prefix="/v1", tags=["limits"])


class ImageFormat(BaseModel):
    """One accepted image format."""

    name: str = Field(examples=["PNG"])
    media_type: str = Field(examples=["image/png"])
    suffixes: list[str] = Field(description="File name suffixes clients offer for it.", examples=[[".png"]])


class Limits(BaseModel):
    """What a job may be: image formats and sizes, caption options, and how long a long-poll may wait."""

    image_formats: list[ImageFormat]
    max_upload_bytes: int = Field(description="Largest uploaded image (multipart or base64), in bytes.")
    max_image_bytes: int = Field(description="Largest image the worker downloads from a URL, in bytes.")
    max_image_pixels: int = Field(description="Largest image, in pixels.")
    max_new_tokens_limit: int = Field(description="Largest max_new_tokens a job may ask for.")
    default_max_new_tokens: int = Field(description="max_new_tokens of a job that names none.")
    max_prompt_chars: int = Field(description="Longest prompt, in characters.")
    max_wait_s: float = Field(description="Longest ?wait= / Prefer: wait= honoured, in seconds.")
    max_page_size: int = Field(description="Largest ?limit= of GET /v1/jobs.")


@router.get("/limits", operation_id="getLimits", summary="What this server accepts")
async def read_limits(settings: AppSettings) -> Limits:
    """The accepted image formats and the limits of this deployment; public, as they reveal nothing of anyone's jobs."""
    formats = [
        ImageFormat(name=name, media_type=media_type, suffixes=list(IMAGE_FILE_SUFFIXES[name]))
        for name, media_type in IMAGE_MEDIA_TYPES.items()
    ]
    return Limits(
        image_formats=formats,
        max_upload_bytes=settings.max_upload_bytes,
        max_image_bytes=settings.max_image_bytes,
        max_image_pixels=settings.max_image_pixels,
        max_new_tokens_limit=settings.max_new_tokens_limit,
        default_max_new_tokens=settings.default_max_new_tokens,
        max_prompt_chars=settings.max_prompt_chars,
        max_wait_s=settings.max_wait_s,
        max_page_size=MAX_PAGE_SIZE,
    )
