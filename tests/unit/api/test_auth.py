"""API keys: hashes only, Bearer parsing, fail-closed defaults, owner ids, and the key CLI."""

from __future__ import annotations

import hashlib
import io
import subprocess
import sys
from pathlib import Path

import pytest

from api.http.auth import (
    ANONYMOUS_OWNER,
    KEY_PREFIX,
    Caller,
    KeyRing,
    _main,
    hash_key,
    new_key,
    owner_of,
    read_key_hashes_file,
)
from shared.errors import Unauthorized
from shared.settings import Settings

REPO_ROOT = Path(__file__).resolve().parents[3]

KEY_A = "cap_key-a-0123456789abcdefghijklmnopqrstuvwxyz"
KEY_B = "cap_key-b-0123456789abcdefghijklmnopqrstuvwxyz"


def ring(*keys: str, allow_anonymous: bool = False) -> KeyRing:
    return KeyRing([hash_key(key) for key in keys], allow_anonymous=allow_anonymous)


def test_hash_key_is_sha256_hex() -> None:
    assert hash_key("secret") == hashlib.sha256(b"secret").hexdigest()


def test_new_keys_are_random_prefixed_and_long() -> None:
    keys = {new_key() for _ in range(20)}
    assert len(keys) == 20
    assert all(key.startswith(KEY_PREFIX) and len(key) >= 40 for key in keys)


def test_valid_key_maps_to_an_owner_derived_from_its_hash() -> None:
    caller = ring(KEY_A, KEY_B).authenticate(f"Bearer {KEY_A}")
    assert caller == Caller(owner_of(hash_key(KEY_A)))
    assert caller.owner == "key_" + hash_key(KEY_A)[:16]
    assert KEY_A not in caller.owner


def test_two_keys_have_different_owners() -> None:
    keys = ring(KEY_A, KEY_B)
    assert keys.authenticate(f"Bearer {KEY_A}").owner != keys.authenticate(f"Bearer {KEY_B}").owner


def test_bearer_scheme_is_case_insensitive() -> None:
    assert ring(KEY_A).authenticate(f"bearer {KEY_A}") == ring(KEY_A).authenticate(f"BEARER {KEY_A}")


@pytest.mark.parametrize(
    "header",
    [
        None,
        "",
        KEY_A,
        f"Basic {KEY_A}",
        f"Token {KEY_A}",
        "Bearer",
        "Bearer ",
        f"Bearer {KEY_A} extra",
        f"Bearer {KEY_A}\r\nX-Injected: 1",
        f"Bearer\t{KEY_A}",
        f"Bearer {KEY_A}x",
        f"Bearer {KEY_A[:-1]}",
        "Bearer " + "a" * 10_000,
        "Bearer ключ",
        f"Bearer {hash_key(KEY_A)}",
    ],
)
def test_missing_malformed_or_wrong_credentials_are_refused(header: str | None) -> None:
    with pytest.raises(Unauthorized):
        ring(KEY_A).authenticate(header)


def test_no_keys_and_no_anonymous_refuses_everything() -> None:
    keys = KeyRing([], allow_anonymous=False)
    for header in (None, "", f"Bearer {KEY_A}"):
        with pytest.raises(Unauthorized):
            keys.authenticate(header)


def test_anonymous_mode_serves_callers_without_a_key() -> None:
    assert ring(allow_anonymous=True).authenticate(None) == Caller(ANONYMOUS_OWNER)


def test_anonymous_mode_still_refuses_a_wrong_key() -> None:
    with pytest.raises(Unauthorized):
        ring(KEY_A, allow_anonymous=True).authenticate("Bearer wrong")


def test_anonymous_mode_still_recognises_a_right_key() -> None:
    caller = ring(KEY_A, allow_anonymous=True).authenticate(f"Bearer {KEY_A}")
    assert caller.owner == owner_of(hash_key(KEY_A))


def test_settings_refuse_a_plain_key_as_a_hash() -> None:
    with pytest.raises(ValueError, match="SHA-256"):
        Settings(api_key_hashes=[KEY_A])


def test_key_ring_reads_settings_and_the_secrets_file(tmp_path: Path) -> None:
    secrets_file = tmp_path / "api-keys"
    secrets_file.write_text(f"# rotated 2026-11\n\n{hash_key(KEY_B).upper()}  # ci\n", encoding="utf-8")
    settings = Settings(api_key_hashes=[hash_key(KEY_A)], api_key_hashes_file=str(secrets_file))
    keys = KeyRing.from_settings(settings)
    assert len(keys) == 2
    assert keys.authenticate(f"Bearer {KEY_B}").owner == owner_of(hash_key(KEY_B))
    assert not keys.allow_anonymous


def test_secrets_file_with_a_plain_key_is_refused_without_echoing_it(tmp_path: Path) -> None:
    secrets_file = tmp_path / "api-keys"
    secrets_file.write_text(f"{hash_key(KEY_A)}\n{KEY_B}\n", encoding="utf-8")
    with pytest.raises(ValueError, match=r"api-keys:2: not a SHA-256") as caught:
        read_key_hashes_file(secrets_file)
    assert KEY_B not in str(caught.value)


def test_cli_hash_key_reads_stdin_and_prints_the_digest() -> None:
    result = subprocess.run(
        [sys.executable, "-m", "api.http.auth", "hash-key"],
        input=KEY_A + "\n",
        capture_output=True,
        text=True,
        cwd=REPO_ROOT,
        timeout=60,
        check=False,
    )
    assert result.returncode == 0
    assert result.stdout.strip() == hash_key(KEY_A)


def test_cli_hash_key_without_input_fails(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(sys, "stdin", io.StringIO(""))
    assert _main(["hash-key"]) == 2


def test_cli_new_key_prints_a_key_and_its_digest(capsys: pytest.CaptureFixture[str]) -> None:
    assert _main(["new-key"]) == 0
    key, digest = capsys.readouterr().out.split()
    assert key.startswith(KEY_PREFIX) and digest == hash_key(key)
