"""The API's listening socket, bound by scripts.stack before uvicorn takes it over with ``--fd``."""

from __future__ import annotations

import socket

import pytest

from scripts.processes import free_port
from scripts.stack import PortTaken, bind_listening_socket


def test_connections_it_accepts_send_small_answers_at_once() -> None:
    # uvicorn --fd wraps the descriptor as AF_UNIX, so asyncio leaves Nagle on for what it accepts; the
    # listener's TCP_NODELAY is what those connections get (a kept-alive answer waited 40 ms without it).
    listener = bind_listening_socket(free_port())
    try:
        with socket.create_connection(listener.getsockname()) as client:
            accepted, _ = listener.accept()
            with accepted:
                assert accepted.getsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY) != 0
            assert client.fileno() >= 0
    finally:
        listener.close()


def test_a_port_in_use_is_an_error_naming_it() -> None:
    listener = bind_listening_socket(free_port())
    port = listener.getsockname()[1]
    try:
        with pytest.raises(PortTaken, match=f"port {port} on 127.0.0.1 is already in use"):
            bind_listening_socket(port)
    finally:
        listener.close()
