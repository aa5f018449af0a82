"""Capability tokens: a token grants exactly its scope on exactly its subject until it expires; anything
changed, forged, expired or spelled differently grants nothing."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from tokenrelay.runtime.tokens import MAX_TOKEN_CHARS, Scope, SecretError, TokenError, TokenSigner, load_signer

SECRET = "s" * 32
STREAM = "0123456789abcdef0123456789abcdef"
NOW = 1_800_000_000.0
signer = TokenSigner(SECRET)


def _token(scope: Scope = Scope.EVENTS, subject: str = STREAM, expires_at: int = int(NOW) + 60) -> str:
    return signer.issue(scope, subject, expires_at=expires_at)


def test_a_token_grants_its_scope_on_its_subject_until_it_expires() -> None:
    grant = signer.verify(_token(), Scope.EVENTS, now=NOW, subject=STREAM)
    assert (grant.scope, grant.subject, grant.expires_at) == (Scope.EVENTS, STREAM, int(NOW) + 60)


def test_a_control_token_names_its_tenant() -> None:
    assert signer.verify(_token(Scope.CONTROL, "acme.corp_1"), Scope.CONTROL, now=NOW).subject == "acme.corp_1"


def test_a_token_is_refused_from_the_second_it_expires() -> None:
    token = _token(expires_at=int(NOW) + 1)
    signer.verify(token, Scope.EVENTS, now=NOW + 0.999)
    with pytest.raises(TokenError):
        signer.verify(token, Scope.EVENTS, now=NOW + 1)


def test_a_token_for_another_stream_is_refused() -> None:
    with pytest.raises(TokenError):
        signer.verify(_token(subject="f" * 32), Scope.EVENTS, now=NOW, subject=STREAM)


def test_a_token_of_another_scope_is_refused() -> None:
    with pytest.raises(TokenError):
        signer.verify(_token(Scope.EVENTS), Scope.CONTROL, now=NOW)
    with pytest.raises(TokenError):
        signer.verify(_token(Scope.CONTROL, "acme"), Scope.EVENTS, now=NOW, subject="acme")


def test_a_stop_token_stops_only_its_stream() -> None:
    token = _token(Scope.STOP)
    assert signer.verify(token, Scope.STOP, now=NOW, subject=STREAM).subject == STREAM
    with pytest.raises(TokenError):
        signer.verify(token, Scope.STOP, now=NOW, subject="f" * 32)


def test_a_stop_token_reads_no_events_and_an_events_token_stops_nothing() -> None:
    with pytest.raises(TokenError):
        signer.verify(_token(Scope.STOP), Scope.EVENTS, now=NOW, subject=STREAM)
    with pytest.raises(TokenError):
        signer.verify(_token(Scope.EVENTS), Scope.STOP, now=NOW, subject=STREAM)
    with pytest.raises(TokenError):
        signer.verify(_token(Scope.CONTROL, STREAM), Scope.STOP, now=NOW, subject=STREAM)


def test_a_token_signed_with_another_secret_is_refused() -> None:
    forged = TokenSigner("x" * 32).issue(Scope.EVENTS, STREAM, expires_at=int(NOW) + 60)
    with pytest.raises(TokenError):
        signer.verify(forged, Scope.EVENTS, now=NOW, subject=STREAM)


@pytest.mark.parametrize("part", range(5))
def test_changing_any_part_of_a_token_makes_it_refused(part: int) -> None:
    parts = _token().split(".")
    parts[part] = parts[part][:-1] + ("A" if parts[part][-1] != "A" else "B")
    with pytest.raises(TokenError):
        signer.verify(".".join(parts), Scope.EVENTS, now=NOW)


def test_a_later_expiry_cannot_be_written_into_a_token() -> None:
    version, scope, subject, _, mac = _token().split(".")
    with pytest.raises(TokenError):
        signer.verify(".".join((version, scope, subject, str(int(NOW) + 10**6), mac)), Scope.EVENTS, now=NOW)


@pytest.mark.parametrize(
    "token",
    ["", ".", "v1.events", "a.b.c.d.e", "v1.events.AAAA.1.x.y", "x" * (MAX_TOKEN_CHARS + 1), "v1..." + "." * 3],
)
def test_malformed_tokens_are_refused(token: str) -> None:
    with pytest.raises(TokenError):
        signer.verify(token, Scope.EVENTS, now=NOW)


@pytest.mark.parametrize("expires", ["0", "01800000060", "+1800000060", "1e9", " 1800000060"])
def test_an_expiry_in_any_but_its_one_spelling_is_refused_even_when_signed(expires: str) -> None:
    signed = f"v1.events.{_token().split('.')[2]}.{expires}"
    token = f"{signed}.{signer._mac(signed)}"
    with pytest.raises(TokenError):
        signer.verify(token, Scope.EVENTS, now=0)


def test_a_subject_in_any_but_its_one_spelling_is_refused_even_when_signed() -> None:
    # "QQ" is "A"; "QR" decodes to the same byte with stray low bits set: a second spelling of one subject.
    signed = f"v1.control.QR.{int(NOW) + 60}"
    token = f"{signed}.{signer._mac(signed)}"
    assert signer.verify(f"v1.control.QQ.{int(NOW) + 60}.{signer._mac(f'v1.control.QQ.{int(NOW) + 60}')}",
                         Scope.CONTROL, now=NOW).subject == "A"  # fmt: skip
    with pytest.raises(TokenError):
        signer.verify(token, Scope.CONTROL, now=NOW)


@given(st.text(min_size=1, max_size=80), st.sampled_from(list(Scope)))
def test_any_subject_round_trips_through_a_token(subject: str, scope: Scope) -> None:
    token = signer.issue(scope, subject, expires_at=int(NOW) + 1)
    assert token.isascii() and len(token.split(".")) == 5
    assert signer.verify(token, scope, now=NOW, subject=subject).subject == subject


def test_a_secret_shorter_than_32_characters_is_refused() -> None:
    with pytest.raises(SecretError):
        TokenSigner("short")
    with pytest.raises(SecretError):
        load_signer("x" * 31)
    assert load_signer(None) is None and load_signer("  ") is None
