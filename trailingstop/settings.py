"""Process settings from the environment (what the operator puts in each Deployment)."""

from __future__ import annotations

import os
from collections.abc import Mapping
from dataclasses import dataclass


@dataclass(frozen=True)
class Settings:
    amqp_url: str = "amqp://guest:guest@127.0.0.1:5672/"
    health_port: int = 8080
    flush_interval: float = 1.0  # orchestrator: coalesce reference/price events this long
    sync_timeout: float = 10.0  # orchestrator: wait this long for the operator's sync answer
    silence_timeout: float = 30.0  # marketdata: check REST after this long without a message
    max_gap: int = 1_000_000  # orchestrator: refill at most this many missing trades over REST
    tick_queue_max: int = 10_000  # orchestrator: its tick queue keeps the newest this many

    @classmethod
    def from_env(cls, environ: Mapping[str, str] | None = None) -> Settings:
        env = os.environ if environ is None else environ
        return cls(
            amqp_url=env.get("AMQP_URL", cls.amqp_url),
            health_port=int(env.get("TRAILINGSTOP_HEALTH_PORT", cls.health_port)),
            flush_interval=float(env.get("TRAILINGSTOP_FLUSH_INTERVAL", cls.flush_interval)),
            sync_timeout=float(env.get("TRAILINGSTOP_SYNC_TIMEOUT", cls.sync_timeout)),
            silence_timeout=float(env.get("TRAILINGSTOP_SILENCE_TIMEOUT", cls.silence_timeout)),
            max_gap=int(env.get("TRAILINGSTOP_MAX_GAP", cls.max_gap)),
            tick_queue_max=int(env.get("TRAILINGSTOP_TICK_QUEUE_MAX", cls.tick_queue_max)),
        )

    def __repr__(self) -> str:  # the AMQP URL may hold a password
        return f"Settings(health_port={self.health_port}, flush_interval={self.flush_interval})"
