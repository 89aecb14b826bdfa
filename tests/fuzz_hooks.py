"""Schemathesis hooks for ``tests/test_fuzz.py`` (loaded with ``SCHEMATHESIS_HOOKS``).

Two things only the API's semantics know, that a generator working from the document alone
cannot:

- A ``cursor`` is an opaque token the registry issued; a made-up one is rightly refused
  (400 ``invalid_query``). Positive cases therefore send none: real cursors reach the list
  routes through the document's ``next_page`` links in the stateful phase.
- ``index`` makes a request a blocking query that may be held for up to five minutes, and
  ``wait`` is only accepted with ``index``. Valid blocking queries are given a short ``wait``
  so that a held request ends within the client's timeout; ``wait`` without ``index`` is
  dropped from positive cases (it is the documented dependency between the two).

- A runtime may refuse input content the schema allows (the memory runtime refuses empty
  content); the document declares that answer (400 ``invalid_request`` on the input route),
  so it is not a failure to accept positive data.

And one check: no response, body or header, may contain any of the secrets the test
planted (the file named by ``YOI_FUZZ_FORBIDDEN``, one string per line).
"""

from __future__ import annotations

import os
import re
from functools import cache
from pathlib import Path
from typing import TYPE_CHECKING, Any

import schemathesis
from schemathesis import GenerationMode

if TYPE_CHECKING:
    from schemathesis.specs.openapi.schemas import OpenApiCase

FORBIDDEN_ENV = "YOI_FUZZ_FORBIDDEN"
SHORT_WAIT = "50ms"
_VALID_WAIT = re.compile(
    r"^(?:[0-9]+(?:\.[0-9]+)?|[ \t]*[0-9]+(?:\.[0-9]+)?[ \t]*(?:ms|s|m|h|d)[ \t]*)$"
)
_VALID_INDEX = re.compile(r"^[0-9]{1,18}$")


def _query_mode(case: OpenApiCase) -> GenerationMode:
    for location, info in case.meta.components.items() if case.meta else ():
        if str(getattr(location, "value", location)) == "query":
            return info.mode
    return case.meta.generation.mode if case.meta else GenerationMode.POSITIVE


@schemathesis.hook
def map_case(context: Any, case: OpenApiCase) -> OpenApiCase:
    query = case.query
    if not isinstance(query, dict):
        return case
    positive = _query_mode(case) == GenerationMode.POSITIVE
    if positive:
        query.pop("cursor", None)
        if "wait" in query and "index" not in query:
            del query["wait"]
    index, wait = query.get("index"), query.get("wait")
    valid_index = index is not None and _VALID_INDEX.match(str(index))
    if valid_index and (wait is None or _VALID_WAIT.match(str(wait))):
        query["wait"] = SHORT_WAIT
    return case


@schemathesis.hook
def filter_failure(
    context: Any, failure: Any, case: OpenApiCase, response: schemathesis.Response
) -> bool:
    """Keep every failure but a runtime's documented refusal of the input content."""
    refused_input = (
        getattr(failure, "code", None) == "ST202"
        and case.path.endswith("/input")
        and response.status_code == 400
        and b'"invalid_request"' in (response.content or b"")
    )
    return not refused_input


@cache
def _forbidden() -> tuple[bytes, ...]:
    path = os.environ.get(FORBIDDEN_ENV)
    if not path:
        return ()
    lines = Path(path).read_text().splitlines()
    return tuple(line.encode() for line in lines if line)


@schemathesis.check
def no_planted_secret(ctx: Any, response: schemathesis.Response, case: OpenApiCase) -> None:
    """No planted secret in the body or in any header of any answer."""
    texts = [response.content or b""]
    texts.extend(f"{k}: {v}".encode() for k, values in response.headers.items() for v in values)
    for needle in _forbidden():
        for text in texts:
            if needle in text:
                raise AssertionError(f"a planted secret reached a response: {needle!r}")
