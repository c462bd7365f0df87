"""Metrics beyond the course's sample, read with psutil: load, swap, CPU time split, disks, sensors, top processes.

Each source has its own narrow guard, so one that fails (no sensors, a mount that went away, a process
that ended) drops only its own values. Lists that rarely change (disks, mounts) are re-read every minute,
not every sample, to keep the collector under 1 % of a core at 1 s.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from datetime import datetime
from pathlib import Path
from typing import Any, TypeVar

import psutil

from runtime import schema

log = logging.getLogger(__name__)

DEVICES_REFRESH_SECONDS = 60.0
# Block devices that are not disks a person looks at: loop mounts (snaps), RAM disks, zram swap.
IGNORED_DISK_PREFIXES = ("loop", "ram", "zram")
TOP_ATTRS = ["pid", "name", "cpu_percent", "memory_percent", "memory_info"]
T = TypeVar("T")


def guarded(source: str, read: Callable[[], T]) -> T | None:
    """The reading, or None (logged) when its source is unavailable here."""
    try:
        return read()
    except (OSError, AttributeError, KeyError, NotImplementedError, ValueError, psutil.Error) as error:
        log.warning("source_unavailable source=%s error=%r", source, error)
        return None


class ExtraSampler:
    """Reads the extended metrics; psutil's CPU time split is primed so the first reading is real."""

    def __init__(self, sys_block: Path = Path("/sys/block")) -> None:
        self.sys_block = sys_block
        self._disks: list[str] = []
        self._mounts: list[str] = []
        self._devices_read_at = float("-inf")
        guarded("cpu_times_percent", psutil.cpu_times_percent)  # the first call measures since boot

    def read(self) -> dict[str, float | int]:
        self._refresh_devices()
        return schema.build_extra(
            load_avg=guarded("load_avg", psutil.getloadavg),
            swap=guarded("swap_memory", lambda: psutil.swap_memory()._asdict()),
            cpu_times=guarded("cpu_times_percent", lambda: psutil.cpu_times_percent()._asdict()),
            disk_io=guarded("disk_io_counters", self._disk_io),
            disk_usage=self._disk_usage(),
            temperatures=guarded("sensors_temperatures", self._temperatures),
        )

    def _refresh_devices(self) -> None:
        if time.monotonic() - self._devices_read_at < DEVICES_REFRESH_SECONDS:
            return
        self._devices_read_at = time.monotonic()
        self._mounts = guarded("disk_partitions", real_mounts) or []
        counters = guarded("disk_io_counters", lambda: psutil.disk_io_counters(perdisk=True)) or {}
        self._disks = whole_disks(counters, self.sys_block)

    def _disk_io(self) -> dict[str, dict[str, int]]:
        counters = psutil.disk_io_counters(perdisk=True) or {}
        return {disk: counters[disk]._asdict() for disk in self._disks if disk in counters}

    def _disk_usage(self) -> dict[str, dict[str, Any]]:
        usage = {}
        for mount in self._mounts:  # one guard per mount: an unmounted or unreadable one drops only itself
            reading = guarded(f"disk_usage {mount}", lambda: psutil.disk_usage(mount)._asdict())
            if reading is not None:
                usage[mount] = reading
        return usage

    @staticmethod
    def _temperatures() -> dict[str, float]:
        readings = {}
        for chip, sensors in psutil.sensors_temperatures().items():
            for index, sensor in enumerate(sensors):
                label = f"{chip} {sensor.label}" if sensor.label else chip
                readings[label if label not in readings else f"{label} {index}"] = sensor.current
        return readings


def real_mounts() -> list[str]:
    """Mount points of real file systems (psutil's all=False), one per device: the shortest path."""
    by_device: dict[str, str] = {}
    for partition in psutil.disk_partitions(all=False):
        known = by_device.get(partition.device)
        if known is None or len(partition.mountpoint) < len(known):
            by_device[partition.device] = partition.mountpoint
    return sorted(by_device.values())


def whole_disks(counters: dict[str, Any], sys_block: Path) -> list[str]:
    """Whole disks (in /sys/block, so not their partitions), without loop and RAM devices."""
    disks = [name for name in counters if not name.startswith(IGNORED_DISK_PREFIXES)]
    if sys_block.is_dir():
        disks = [name for name in disks if (sys_block / name).exists()]
    return sorted(disks)


class TopProcesses:
    """The top processes by CPU and memory every `period` seconds; per-process CPU % primed at start."""

    def __init__(self, period: float = schema.TOP_SECONDS) -> None:
        self.period = period
        self._next = time.monotonic() + period
        guarded("process_iter", lambda: list(psutil.process_iter(["cpu_percent"])))  # prime every process

    def due(self) -> dict[str, Any] | None:
        """The top processes when `period` has passed since the last reading, else None."""
        if time.monotonic() < self._next:
            return None
        self._next = time.monotonic() + self.period
        return guarded("process_iter", self.read)

    @staticmethod
    def read() -> dict[str, Any]:
        processes = []
        # process_iter keeps its Process objects between calls, so cpu_percent is since the last reading.
        for process in psutil.process_iter(TOP_ATTRS, ad_value=None):
            info = process.info
            memory = info.pop("memory_info")
            processes.append({**info, "rss": memory.rss if memory is not None else None})
        return schema.build_top(datetime.now(), processes)
