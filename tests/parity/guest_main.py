"""Guest side of the parity tier: run the behaviour table against the kernel, write JSON.

Run inside the QEMU guest (by ``dmabuf.testing.qemu.run_guest_python``) with the host's Python,
so it imports the host's ``dmabuf.uapi``::

    python tests/parity/guest_main.py OUT.json [NAME ...]

Each behaviour gets a SIGALRM budget so one that hangs cannot eat the whole boot timeout.
The output: ``{"meta": {...}, "results": {name: {"observed": {...}, "seconds": s} |
{"error": traceback} | {"skipped": reason}}}``.
"""

from __future__ import annotations

import json
import platform
import sys
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))

from behaviours import Env, run_behaviours

import dmabuf.uapi

PER_BEHAVIOUR_S = 40


def main(argv: list[str]) -> int:
    """Run the behaviours named in ``argv[2:]`` (all if none) and write ``argv[1]``."""
    out = Path(argv[1])
    t0 = time.monotonic()
    env = Env()

    def progress(name: str, res: dict[str, Any]) -> None:
        state = next(k for k in ("error", "skipped", "observed") if k in res)
        print(f"PARITY {name}: {state} ({res.get('seconds')} s)", flush=True)

    results = run_behaviours(env, set(argv[2:]) or None, budget_s=PER_BEHAVIOUR_S,
                             progress=progress)
    meta = {"kernel": platform.release(), "machine": platform.machine(),
            "python": sys.version.split()[0], "features": env.features(),
            "page_size": env.page, "seconds": round(time.monotonic() - t0, 3),
            "uapi_package": str(Path(dmabuf.uapi.__file__).resolve().parent)}
    tmp = out.with_suffix(".tmp")
    tmp.write_text(json.dumps({"meta": meta, "results": results}, indent=1, sort_keys=True))
    tmp.replace(out)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv))
