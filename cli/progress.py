"""One progress bar for the commands: tqdm on stderr (count, rate, ETA), driven by the library's
`progress(done, total)` callbacks."""
from contextlib import contextmanager


@contextmanager
def progress_bar(unit: str):
    """Yields `update(done, total)`; the bar shows only on a terminal (tqdm's disable=None)."""
    from tqdm import tqdm

    with tqdm(total=None, unit=unit, disable=None, leave=False, dynamic_ncols=True) as bar:
        def update(done, total):
            bar.total = total
            bar.update(done - bar.n)

        yield update
