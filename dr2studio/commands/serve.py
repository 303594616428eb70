"""``dr2studio serve``: the Ray Serve deployment of the studio."""
from __future__ import annotations

import json
import os
import signal
import threading
from pathlib import Path

import click

__all__ = ["serve"]


@click.command("serve")
@click.option("--model", required=True, metavar="DIR", help="Model directory (or hub id) each replica loads.")
@click.option("--replicas", default=1, show_default=True, type=click.IntRange(1, 1024), help="Number of replicas.")
@click.option("--num-gpus", default=0.0, show_default=True, type=click.FloatRange(0, 64), help="GPUs per replica (fractions allowed).")
@click.option("--num-cpus", default=1.0, show_default=True, type=click.FloatRange(0, 1024), help="CPUs per replica.")
@click.option("--host", default="127.0.0.1", show_default=True, help="HTTP address of the Serve proxy.")
@click.option("--port", default=8000, show_default=True, type=click.IntRange(1, 65535), help="HTTP port.")
@click.option("--address", metavar="ADDR", help="Join an existing Ray cluster (e.g. auto or ray://head:10001); default: a local Ray instance.")
@click.option("--style-embedding", type=click.Path(exists=True, dir_okay=False, path_type=Path), help="Default style (.npy) for requests without one.")
@click.option("--max-pending", default=8, show_default=True, type=click.IntRange(1, 1000), help="Jobs that may wait per replica.")
@click.option("--dtype", type=click.Choice(["float32", "float16", "bfloat16"]), help="Weights dtype on the replicas.")
def serve(model, replicas, num_gpus, num_cpus, host, port, address, style_embedding, max_pending, dtype) -> None:
    """Serve generate / extend / infill over HTTP with streamed progress and audio, until Ctrl-C.

    \b
    Examples:
      dr2studio serve --model ./dr2-model --num-gpus 1
      dr2studio serve --model ./dr2-model --replicas 4 --num-gpus 1 --address auto
      dr2studio bridge --engine http://127.0.0.1:8000      # then point the bridge at it

    Prints {"url": ...} on stdout once the application is up.
    """
    local = Path(model).expanduser()
    if (local.exists() or os.sep in model or model.startswith(".")) and not local.is_dir():
        raise click.ClickException(f"--model {model}: no such model directory")
    try:
        import ray
        from ray import serve as ray_serve

        from dr2studio.serve import build_app
    except ImportError as exc:
        raise click.ClickException(f"Ray Serve is not installed ({exc}); pip install 'dr2studio[ray]'") from exc
    args = {"model": str(local.resolve()) if local.is_dir() else model, "num_replicas": replicas, "num_gpus": num_gpus,
            "num_cpus": num_cpus, "max_pending": max_pending, "dtype": dtype,
            "style_embedding": str(style_embedding.resolve()) if style_embedding else None}
    # the body limit at Serve's proxy (it buffers bodies before any replica sees them): the local Ray
    # instance started here inherits it; a cluster at --address needs the same variable set by its operator
    os.environ.setdefault("RAY_SERVE_HTTP_PROXY_CALLBACK_IMPORT_PATH", "dr2studio.serve_proxy.proxy_middlewares")
    ray.init(address=address, include_dashboard=False) if address else ray.init(include_dashboard=False)
    stop = threading.Event()
    previous = signal.signal(signal.SIGTERM, lambda *_: stop.set())
    try:
        ray_serve.start(http_options={"host": host, "port": port})
        ray_serve.run(build_app(args), name="dr2studio", route_prefix="/")
        click.echo(json.dumps({"url": f"http://{host}:{port}", "replicas": replicas}))
        click.echo(f"serving {model} at http://{host}:{port}; Ctrl-C to stop", err=True)
        while not stop.wait(0.5):
            pass
    except KeyboardInterrupt:
        pass
    finally:
        signal.signal(signal.SIGTERM, previous)
        try:
            if address:
                ray_serve.delete("dr2studio")  # leave the rest of a shared cluster alone
            else:
                ray_serve.shutdown()
        finally:
            ray.shutdown()
            click.echo("serve stopped", err=True)
