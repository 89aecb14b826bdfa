"""Identifier validation and the upstream-compatible id derivation (contract section 1)."""

from __future__ import annotations

import hashlib

import pytest
from hypothesis import given
from hypothesis import strategies as st

from yoi_registryd.errors import InvalidIdentifier
from yoi_registryd.ids import (
    LOCAL_WORKER_PREFIX,
    MAX_ID_BYTES,
    derive_id,
    is_valid_identifier,
    local_worker_id,
    validate_identifier,
)


def digest(raw: str) -> str:
    return hashlib.sha256(raw.encode("utf-8")).hexdigest()[:16]


# -- derivation: the contract's examples, verbatim -------------------------------------------


@pytest.mark.parametrize(
    ("raw", "expected"),
    [
        ("coder", "local-worker-coder-c84a9e3ad144b43d"),
        ("foo.bar", "local-worker-foo-bar-2595d08ad22c733f"),
        ("foo-bar", "local-worker-foo-bar-7d89c4f517e3bd4b"),
    ],
)
def test_contract_examples(raw: str, expected: str) -> None:
    assert local_worker_id(raw) == expected
    assert derive_id(LOCAL_WORKER_PREFIX, raw) == expected


def test_digest_keeps_apart_names_with_the_same_body() -> None:
    assert local_worker_id("foo.bar") != local_worker_id("foo-bar")
    assert (
        local_worker_id("foo.bar").rsplit("-", 1)[0] == local_worker_id("foo-bar").rsplit("-", 1)[0]
    )


def test_very_long_name_gives_exactly_120_chars() -> None:
    raw = "a" * 500
    derived = local_worker_id(raw)
    assert len(derived) == MAX_ID_BYTES
    room = MAX_ID_BYTES - len(LOCAL_WORKER_PREFIX) - 17
    assert derived == f"{LOCAL_WORKER_PREFIX}{'a' * room}-{digest(raw)}"
    assert is_valid_identifier(derived)


def test_cut_body_is_trimmed_of_dashes_again() -> None:
    room = MAX_ID_BYTES - len(LOCAL_WORKER_PREFIX) - 17
    raw = "a" * (room - 1) + ".bbbb"  # the cut lands right after the '-' from '.'
    derived = local_worker_id(raw)
    assert derived == f"{LOCAL_WORKER_PREFIX}{'a' * (room - 1)}-{digest(raw)}"
    assert len(derived) == MAX_ID_BYTES - 1


def test_cut_inside_a_run_of_dashes_keeps_only_the_head() -> None:
    raw = "a" + "." * 300 + "b"
    assert local_worker_id(raw) == f"{LOCAL_WORKER_PREFIX}a-{digest(raw)}"


@pytest.mark.parametrize("raw", ["", "...", "---", "@#!", "é", "日本", " "])
def test_empty_body_becomes_id(raw: str) -> None:
    assert local_worker_id(raw) == f"{LOCAL_WORKER_PREFIX}id-{digest(raw)}"


def test_each_non_ascii_character_becomes_one_dash() -> None:
    # 'é' is 2 UTF-8 bytes and '日' 3: each still gives exactly one '-'.
    assert local_worker_id("aé日b") == f"{LOCAL_WORKER_PREFIX}a--b-{digest('aé日b')}"
    # Non-ASCII letters and digits are not kept, even when str.isalnum() says they are.
    assert local_worker_id("xÅ٣y") == f"{LOCAL_WORKER_PREFIX}x--y-{digest('xÅ٣y')}"


def test_runs_of_dashes_are_not_collapsed_and_ends_are_trimmed() -> None:
    raw = "--A..b__C  d--"
    assert local_worker_id(raw) == f"{LOCAL_WORKER_PREFIX}a--b__c--d-{digest(raw)}"


def test_ascii_letters_and_digits_are_lowercased_underscore_kept() -> None:
    raw = "Ticket#Worker@Reviewer_2"
    assert local_worker_id(raw) == f"{LOCAL_WORKER_PREFIX}ticket-worker-reviewer_2-{digest(raw)}"


def test_other_prefixes() -> None:
    assert derive_id("remote-gpu-1", "x") == f"remote-gpu-1x-{digest('x')}"
    prefix = "p" * 102  # room for 1 body character
    assert derive_id(prefix, "abcdef") == f"{prefix}a-{digest('abcdef')}"
    assert len(derive_id(prefix, "abcdef")) == MAX_ID_BYTES


# -- validation -------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "value",
    [
        "a",
        "coder",
        "remote:gpu-1",
        "local-worker-runtime",
        "A_b-C:9",
        ":",
        "x" * 120,
        local_worker_id("coder"),
    ],
)
def test_valid_identifiers(value: str) -> None:
    assert is_valid_identifier(value)
    assert validate_identifier(value, "worker_id") == value


@pytest.mark.parametrize(
    "value",
    [
        "",
        "x" * 121,
        "a.b",
        "a/b",
        "a@b",
        "a%2Fb",
        "a b",
        "a\tb",
        "a\nb",
        "abc\n",
        " abc",
        "..",
        "a\\b",
        "a\x00b",
        "é",
        "\uff41",  # fullwidth letter a
        "٣",  # Arabic-Indic digit: isdigit() but not [0-9]
        "é" * 60,  # 60 characters but 120 bytes, and not ASCII anyway
    ],
)
def test_invalid_identifiers(value: str) -> None:
    assert not is_valid_identifier(value)
    with pytest.raises(InvalidIdentifier) as info:
        validate_identifier(value, "runtime_id")
    assert info.value.status == 400
    assert info.value.code == "invalid_identifier"
    assert info.value.details["parameter"] == "runtime_id"


def test_length_limit_is_in_bytes_at_the_boundary() -> None:
    assert is_valid_identifier("a" * 120)
    assert not is_valid_identifier("a" * 121)
    assert not is_valid_identifier("a" * 119 + "é")  # 121 bytes


# -- properties -------------------------------------------------------------------------------

names = st.text(min_size=0, max_size=400)


@given(names)
def test_derived_id_is_always_a_valid_id(raw: str) -> None:
    derived = local_worker_id(raw)
    assert is_valid_identifier(derived)
    assert len(derived.encode("utf-8")) <= MAX_ID_BYTES
    assert derived.startswith(LOCAL_WORKER_PREFIX)
    assert derived.endswith("-" + digest(raw))
    assert derive_id(LOCAL_WORKER_PREFIX, raw) == derived  # deterministic


@given(names, names)
def test_distinct_names_give_distinct_ids(a: str, b: str) -> None:
    if a != b:
        assert local_worker_id(a) != local_worker_id(b)
    else:
        assert local_worker_id(a) == local_worker_id(b)


@given(st.text(alphabet="abcdefghijklmnopqrstuvwxyz0123456789_", min_size=1, max_size=80))
def test_names_that_are_already_lowercase_ids_keep_their_body(raw: str) -> None:
    assert local_worker_id(raw) == f"{LOCAL_WORKER_PREFIX}{raw}-{digest(raw)}"


def test_a_prefix_too_long_for_the_budget_still_gives_a_valid_id() -> None:
    prefix = "remote-" + "r" * 110
    derived = derive_id(prefix, "worker")
    assert len(derived) == MAX_ID_BYTES
    assert is_valid_identifier(derived)
    assert derived.endswith("-" + hashlib.sha256(b"worker").hexdigest()[:16])
