"""The server's view of an LCMAPS result: secondary gids as C orders them, each gid once."""

from __future__ import annotations

from scas_server.engines import secondary_gids


def test_secondary_gids_keep_c_order_without_duplicates() -> None:
    """A VOMS mapping used to send [1024, 1024, 1025, 1026, 1027]: the second primary gid
    was also among the secondary gids. Each gid is now sent once, in C's order (the extra
    primary gids first, then the secondary ones)."""
    assert secondary_gids((1000, 1024), (1024, 1025, 1026, 1027)) == (1024, 1025, 1026, 1027)
    assert secondary_gids((1000,), (1027, 1025, 1027)) == (1027, 1025)
    assert secondary_gids((1000, 1030, 1024), (1024,)) == (1030, 1024)
    assert secondary_gids((1000,), ()) == ()
