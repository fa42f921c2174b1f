"""Shared fixtures: a small trained run (hopnet 64-64 on split Fashion-MNIST) reused by tests, a
folder served on 127.0.0.1, and no network for any test but that."""
from pathlib import Path

import pytest

FASHION = Path("/usr/share/datasets/fashion-mnist")


@pytest.fixture(autouse=True, scope="session")
def _no_traffic_but_local():
    """No test reaches the network: urllib (which torchvision's downloads use too) refuses every
    host but 127.0.0.1, as a machine offline would."""
    import urllib.error
    import urllib.parse
    import urllib.request

    urlopen = urllib.request.urlopen

    def local_only(url, *args, **kwargs):
        host = urllib.parse.urlsplit(getattr(url, "full_url", url)).hostname
        if host != "127.0.0.1":
            raise urllib.error.URLError(f"tests may not reach {host}")
        return urlopen(url, *args, **kwargs)

    patch = pytest.MonkeyPatch()
    patch.setattr(urllib.request, "urlopen", local_only)
    yield
    patch.undo()


@pytest.fixture
def local_http(tmp_path, monkeypatch):
    """A folder served over HTTP on 127.0.0.1 (a free port, a thread): (folder, its URL ending in
    /, the paths requested)."""
    import functools
    import http.server
    import threading

    monkeypatch.setenv("no_proxy", "127.0.0.1")
    monkeypatch.setenv("NO_PROXY", "127.0.0.1")
    root = tmp_path / "served"
    root.mkdir()
    requested = []

    class Handler(http.server.SimpleHTTPRequestHandler):
        def log_message(self, *args):  # quiet
            pass

        def do_GET(self):
            requested.append(self.path)
            super().do_GET()

    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), functools.partial(Handler, directory=str(root)))
    thread = threading.Thread(target=server.serve_forever, args=(0.05,), daemon=True)
    thread.start()
    try:
        yield root, f"http://127.0.0.1:{server.server_address[1]}/", requested
    finally:
        server.shutdown()
        server.server_close()
        thread.join(5)


@pytest.fixture(scope="session")
def small_run(tmp_path_factory):
    """Archive of 3 tasks x 30 steps of hopnet (64, 64) on split Fashion-MNIST, per-layer projection-zd."""
    if not FASHION.is_dir():
        pytest.skip("dataset-fashion-mnist not installed")
    from supsup_hopfield.run import RunConfig, train_run
    from supsup_hopfield.training import TrainConfig

    path = tmp_path_factory.mktemp("run") / "small.h5"
    cfg = RunConfig(dataset="split-fashion-mnist", model="hopnet", widths=(64, 64),
                    train=TrainConfig.for_architecture("hopnet", steps=30, device="cpu"))
    train_run(cfg, 3, path)
    return path
