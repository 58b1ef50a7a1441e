"""What counts as a correct answer in the load test (kept apart from locust to be testable)."""

from __future__ import annotations

from typing import Any

from client.xacml import XacmlError, parse_response


def check_reply(item: dict[str, Any], request_id: str, body: bytes,
                observed: dict[str, tuple[str, int]], *, bare: bool = False) -> str | None:
    """Why this reply is wrong for the query ``item``, or None when it is what was expected.

    Anything but a well-formed decision for ``request_id`` is wrong. From the real
    service it must also be the expected decision (banned users: Deny), an account
    from the user's pool, and the same account and uid the user got before in this
    run (``observed``, updated here). The bare yardstick answers Permit to everyone,
    so from it only the form is checked.
    """
    try:
        decision = parse_response(body, expect_in_response_to=request_id)
    except XacmlError as exc:
        return f"not a well-formed decision: {exc}"
    if bare:
        return None
    if decision.decision != item["expect"]:
        return (f"{decision.decision} for a user expecting {item['expect']}: "
                f"{decision.status_message or ''}")
    if decision.decision != "Permit":
        return None
    name, uid = decision.username or "", decision.uid
    if not name.startswith(item["pool"]) or uid is None:
        return f"account {name!r} is not from pool {item['pool']}"
    first = observed.setdefault(item["dn"], (name, uid))
    if first != (name, uid):
        return f"user mapped to {name}/{uid}, earlier in this run to {first[0]}/{first[1]}"
    return None
