"""A fast local image server for the benches, in a process of its own so its CPU is measured apart.

``python -m bench.image_server --port P --size 128 --count 16`` serves ``/img/N.png`` (N modulo
``--count``): drawn shapes of ``--size`` pixels square, PNG, made once at start. ``--cache-control V``
sends ``Cache-Control: V`` with each (as a site's static images usually do); none by default.
"""

from __future__ import annotations

import argparse
import io
import random

from aiohttp import web

from model import shapes


def drawn_pngs(size_px: int, count: int) -> list[bytes]:
    """``count`` distinct drawn shapes, PNG-encoded, ``size_px`` square."""
    rng = random.Random(0)
    images = []
    for _ in range(count):
        out = io.BytesIO()
        image, _caption = shapes.draw_sample(rng, image_size=(size_px, size_px))
        image.save(out, "PNG")
        images.append(out.getvalue())
    return images


def make_app(pngs: list[bytes], cache_control: str = "") -> web.Application:
    """``/img/{n}.png`` serves ``pngs[n % len(pngs)]``, with ``Cache-Control: cache_control`` unless empty."""
    headers = {"Cache-Control": cache_control} if cache_control else {}

    async def image(request: web.Request) -> web.Response:
        index = int(request.match_info["n"]) % len(pngs)
        return web.Response(body=pngs[index], content_type="image/png", headers=headers)

    app = web.Application()
    app.router.add_get("/img/{n:\\d+}.png", image)
    return app


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--port", type=int, required=True)
    parser.add_argument("--size", type=int, default=128)
    parser.add_argument("--count", type=int, default=16)
    parser.add_argument("--cache-control", default="", help="the Cache-Control header's value; none when empty")
    args = parser.parse_args()
    web.run_app(
        make_app(drawn_pngs(args.size, args.count), args.cache_control),
        host="127.0.0.1",
        port=args.port,
        access_log=None,
    )


if __name__ == "__main__":
    main()
