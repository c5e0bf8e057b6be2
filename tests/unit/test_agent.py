"""``xatm participant``'s settings in process: a flag wins over the environment.

The agent as a real process is in tests/system/test_agent.py.
"""

from __future__ import annotations

import pytest

from xatm.participant.agent.server import AgentSettings, UsageError, resolve


def test_settings_flags_win_over_environment() -> None:
    env = {"XATM_RESOURCE": "sqlite:env.db", "XATM_POOL_SIZE": "3", "XATM_LOG_JSON": "yes"}
    settings = resolve({"resource": "sqlite:flag.db", "pool_size": None, "log_json": None}, env)
    assert (settings.resource, settings.pool_size, settings.log_json) == ("sqlite:flag.db", 3, True)
    assert resolve({}, {"XATM_RESOURCE": "sqlite:a.db"}).listen == AgentSettings().listen
    with pytest.raises(UsageError, match="XATM_LOG_JSON: invalid value 'maybe'"):
        resolve({}, {**env, "XATM_LOG_JSON": "maybe"})
