"""STAND-IN until helper A's tests/system/image.py (`build_image()`) lands: delete after merging it.

Builds localhost/meshop:dev from localhost/debian-python:bookworm (deploy/image/base-image.sh) with
the project's wheels built on the host, as the plan's image: venv /opt/meshop, uid 1000, ENTRYPOINT meshop.
"""

from __future__ import annotations

import subprocess
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).parents[2]
IMAGE = "localhost/meshop:standin-d"  # not :dev, which helper A builds
CONTAINERFILE = """\
FROM localhost/debian-python:bookworm
COPY wheels /wheels
RUN python3 -m venv /opt/meshop && /opt/meshop/bin/pip install --no-cache-dir --no-index --find-links /wheels meshop \
 && rm -rf /wheels
ENV PATH=/opt/meshop/bin:/usr/local/bin:/usr/bin:/bin
USER 1000:1000
WORKDIR /tmp
ENTRYPOINT ["meshop"]
CMD ["--help"]
"""


def build_image() -> str:
    with tempfile.TemporaryDirectory() as tmp:
        context = Path(tmp)
        subprocess.run(
            # async-timeout: redis needs it on Debian's Python 3.11.2 (< 3.11.3), not on the host's
            [
                sys.executable,
                "-m",
                "pip",
                "wheel",
                "--quiet",
                str(ROOT),
                "async-timeout>=4.0.3",
                "-w",
                str(context / "wheels"),
            ],
            check=True,
            capture_output=True,
        )
        (context / "Containerfile").write_text(CONTAINERFILE)
        subprocess.run(["podman", "build", "--quiet", "-t", IMAGE, str(context)], check=True, capture_output=True)
    return IMAGE
