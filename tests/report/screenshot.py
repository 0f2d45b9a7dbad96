"""Render docs/img/report.png: the admin report of a realistic ledger, as headless Chromium shows it.

    python -m tests.report.screenshot [--output docs/img/report.png]

The ledger holds the demo batch (``hpcqueue submit examples/prompts.jsonl --wait``: the real demo model on
this machine) and six synthetic batches of the days before it (``tests.report.populate``: three targets at two
sites, plans with baselines, accounting, a failed, a lost and a retried task). Everything runs in a temporary
directory.
"""

from __future__ import annotations

import argparse
import os
import tempfile
import time
from pathlib import Path

from tests.conftest import EXAMPLES, REPO, run_cli
from tests.report import populate
from tests.report.browser import open_page, start

WIDTH_PX = 1280


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--output", type=Path, default=REPO / "docs" / "img" / "report.png")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        # The CLI runs in ``root`` and names the ledger relatively, so the page names no temporary path.
        url = f"sqlite:///{root / 'ledger.sqlite'}"
        env = {key: value for key, value in os.environ.items() if not key.startswith("HPCQUEUE_")}
        env.update(
            HPCQUEUE_DB_URL="sqlite:///ledger.sqlite",
            HPCQUEUE_BATCH_ROOT=str(root / "batches"),
            HPCQUEUE_CACHE_DIR=str(root / "cache"),
            XDG_CONFIG_HOME=str(root / "config"),
            XDG_DATA_HOME=str(root / "data"),
            HF_HUB_OFFLINE="1",
            TOKENIZERS_PARALLELISM="false",
        )
        submitted = run_cli(
            ["submit", str(EXAMPLES / "prompts.jsonl"), "--wait", "--task-size", "24"], env, cwd=root
        )
        if submitted.returncode != 0:
            raise SystemExit(f"the demo batch failed: {submitted.stderr}")
        from hpcqueue.ledger import Ledger

        with Ledger(url) as ledger:
            populate(ledger, root / "synthetic", start=time.time() - 7 * 86_400)
        page = root / "report.html"
        written = run_cli(["report", "--all-users", "-o", str(page)], env, cwd=root)
        if written.returncode != 0:
            raise SystemExit(f"hpcqueue report failed: {written.stderr}")
        driver = start()
        try:
            errors = open_page(driver, page)
            if errors:
                raise SystemExit(f"the page logged console errors: {errors}")
            height = driver.execute_script("return document.documentElement.scrollHeight")
            driver.set_window_size(WIDTH_PX, height)
            args.output.parent.mkdir(parents=True, exist_ok=True)
            driver.save_screenshot(str(args.output))
        finally:
            driver.quit()
    print(f"wrote {args.output}")


if __name__ == "__main__":
    main()
