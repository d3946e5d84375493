"""Progress bars (tqdm), and a bar that shows nothing."""

from __future__ import annotations


def _progress(total: int, desc: str, unit: str = "file", enabled: bool = True):
    from tqdm.auto import tqdm

    return tqdm(total=total, desc=desc, unit=unit, disable=not enabled, dynamic_ncols=True)


class _NoBar:
    def update(self, n: int = 1) -> None:
        pass
