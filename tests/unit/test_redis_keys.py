"""Every Redis name is made in one place (`shared.bus.Keys`), and docs/redis.md lists exactly those."""

from __future__ import annotations

import inspect
import re
from datetime import date
from pathlib import Path

from shared.bus import Keys

REDIS_MD = Path(__file__).resolve().parents[2] / "docs" / "redis.md"
#: Sample arguments by parameter name (the doc's own examples use these).
SAMPLES = {"symbol": "AAPL", "day": date(2026, 11, 24), "event_id": "abc:fill:10", "consumer": "manager-1"}


def names_keys_make(keys: Keys) -> dict[str, str]:
    """member name -> the key it makes (RQ queue names and consumer group names aside)."""
    made = {}
    for name, member in inspect.getmembers(Keys):
        if name.startswith("_") or name == "queue":
            continue
        if isinstance(member, property):
            made[name] = getattr(keys, name)
        elif inspect.isfunction(member):
            params = list(inspect.signature(member).parameters)[1:]
            made[name] = getattr(keys, name)(*(SAMPLES[p] for p in params))
    return made


def documented() -> list[tuple[str, re.Pattern]]:
    """Every `fl:...` name docs/redis.md shows, with a regex where `<placeholder>` matches any text."""
    names = sorted(set(re.findall(r"`(fl:[^`\s]+)`", REDIS_MD.read_text())))
    return [(n, re.compile("^" + re.sub(r"<[^>]+>", ".+", re.escape(n).replace(r"\<", "<").replace(r"\>", ">")) + "$"))
            for n in names]


def documented_key_patterns() -> list[re.Pattern]:
    """The regexes alone (the integration tests match the keys a real run leaves against them)."""
    return [pattern for _name, pattern in documented()]


def test_every_key_the_line_makes_is_documented_in_docs_redis_md():
    made = names_keys_make(Keys("fl"))
    assert len(made) >= 25
    undocumented = {name: key for name, key in made.items() if not any(p.match(key) for _n, p in documented())}
    assert undocumented == {}


def test_every_key_docs_redis_md_lists_is_one_keys_makes():
    made = names_keys_make(Keys("fl")).values()
    unknown = [name for name, pattern in documented() if not any(pattern.match(key) for key in made)]
    assert unknown == []


def test_the_namespace_prefixes_every_key_and_nothing_else_changes():
    fl, other = names_keys_make(Keys("fl")), names_keys_make(Keys("acct2"))
    assert {name: key.replace("fl:", "acct2:", 1) for name, key in fl.items()} == other
