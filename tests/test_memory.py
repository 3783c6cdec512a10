"""retain_freed_memory: freed blocks are reused instead of mapped afresh (process-wide, so each
case runs in its own interpreter)."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest

from hearproto.memory import retain_freed_memory

# Page faults of the second of two 64 MiB tensors allocated, filled and freed in turn.
PROBE = """
import json, resource, torch
from hearproto.memory import retain_freed_memory
applied = retain_freed_memory()
x = torch.ones(16 * 2**20); del x
before = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
x = torch.ones(16 * 2**20); del x
print(json.dumps({"applied": applied,
                  "faults": resource.getrusage(resource.RUSAGE_SELF).ru_minflt - before}))
"""


def probe(malloc: str) -> dict:
    env = dict(os.environ, HEARPROTO_MALLOC=malloc)
    done = subprocess.run([sys.executable, "-c", PROBE], env=env, capture_output=True,
                          text=True, check=True)
    return json.loads(done.stdout.strip().splitlines()[-1])


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="glibc's malloc only")
def test_freed_memory_is_reused_without_page_faults():
    system, retained = probe("system"), probe("retain")
    pages = 64 * 2**20 // os.sysconf("SC_PAGE_SIZE")
    assert not system["applied"] and system["faults"] > pages // 2
    assert retained["applied"] and retained["faults"] < pages // 20


def test_a_bad_setting_is_named(monkeypatch):
    monkeypatch.setenv("HEARPROTO_MALLOC", "jemalloc")
    monkeypatch.setattr("hearproto.memory._applied", False)
    with pytest.raises(ValueError, match="HEARPROTO_MALLOC must be retain or system"):
        retain_freed_memory()
