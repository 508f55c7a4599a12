"""Faults during a client session: the server restarts, or goes away for good."""

from __future__ import annotations

import subprocess
import threading
import time

import pytest
from conftest import repository_of

from sam2_triton.client import Sam2Client, UserError
from sam2_triton.server import EmbeddedTriton, free_port


def start(repository, ports, log):
    server = EmbeddedTriton(repository, *ports, config_name="cpu", exit_timeout_s=1)
    server.start(stdout=log, stderr=subprocess.STDOUT)
    server.wait_ready(timeout=120)
    return server


@pytest.mark.parametrize("protocol", ["http", "grpc"])
def test_session_survives_a_restart_then_fails_clearly(tiny_repository, photos, tmp_path, protocol):
    # The two models the client calls: a restart takes seconds, well within the retries.
    repository = repository_of(tiny_repository, tmp_path / "repo", "sam2_encoder", "sam2_decoder")
    ports = (free_port(), free_port(), free_port())
    log = open(tmp_path / "triton.log", "w")  # noqa: SIM115 - shared by two servers
    server = start(repository, ports, log)
    url = f"127.0.0.1:{ports[0] if protocol == 'http' else ports[1]}"
    client = Sam2Client(url, protocol, retries=5)
    try:
        embedding = client.encode_image(photos["chelsea"])  # the session has reached the server
        before = client.decode(embedding, points=[[200, 150]])

        # Restart on the same ports while the client keeps working.
        server.stop()
        restarted = {}
        thread = threading.Thread(
            target=lambda: restarted.update(server=start(repository, ports, log))
        )
        thread.start()
        t0 = time.monotonic()
        after = client.decode(embedding, points=[[200, 150]])  # retried until the server is back
        thread.join()
        assert time.monotonic() - t0 > 0.4  # it did wait for the new server
        assert (after.low_res_logits == before.low_res_logits).all()

        # Gone for good: bounded retries, then one clear error.
        restarted["server"].stop()
        t0 = time.monotonic()
        with pytest.raises(UserError) as err:
            client.decode(embedding, points=[[100, 100]])
        elapsed = time.monotonic() - t0
        message = str(err.value)
        assert "cannot reach the Triton server" in message
        assert "gave up after 5 retries" in message and "\n" not in message
        assert elapsed < 30
    finally:
        client.close()
        server.stop()
        if "server" in restarted:
            restarted["server"].stop()
        log.close()


def test_a_server_never_reached_fails_at_once(photos):
    t0 = time.monotonic()
    with (
        Sam2Client(f"127.0.0.1:{free_port()}", retries=5) as client,
        pytest.raises(UserError) as err,
    ):
        client.encode_image(photos["chelsea"])
    assert time.monotonic() - t0 < 5
    assert "cannot reach the Triton server" in str(err.value)
    assert "gave up" not in str(err.value)
