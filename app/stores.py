"""The page's shared, cached resources: one store per host's keys, the host registry."""

from __future__ import annotations

import redis
import streamlit as st

from app import data, hosts
from runtime import schema
from runtime.config import RedisSettings


@st.cache_resource
def metrics_store(redis_settings: RedisSettings, keys: schema.Keys) -> data.MetricsStore:
    """One store per Redis and keys, shared by every viewer and every rerun."""
    return data.MetricsStore(redis_settings, keys)


@st.cache_data(ttl=5, show_spinner=False)
def known_hosts(_store: data.MetricsStore, registry: str) -> tuple[dict[str, str], int]:
    """The valid host ids (-> last seen) and the count of invalid ones; none when Redis is away."""
    try:
        return hosts.registered_hosts(_store.client, schema.Keys(input=registry.removesuffix(":hosts")))
    except redis.RedisError:
        return {}, 0
