"""`dcssa-rt index PHOTOS --ray [ADDRESS]`: embed a catalogue on Ray.

Ray Data reads the files (``read_binary_files``), a pool of actors runs the photo encoder
(``map_batches`` with a callable class that loads the bundle once per actor,
``compute=ActorPoolStrategy``), and the driver streams the embedded blocks back and merges them in
path order into the gallery that :func:`~.gallery.build_gallery` writes (index, recall, labels: the
same code as the local path). The same command runs on a local instance (``--ray``: started here
with a bounded object store) and on a cluster (``--ray auto`` inside ``ray job submit``, or
``--ray ray://HEAD:10001``); every node must be able to read the bundle and the photos (a shared
file system) and have dcssa-rt installed.

Ray is optional (the ``[ray]`` extra) and imported only when ``--ray`` is given.
"""

from __future__ import annotations

import io
import os
from collections.abc import Callable
from pathlib import Path

import numpy as np

from .backends.optional import optional_import
from .bundle import Bundle
from .errors import BackendError, GalleryError
from .progress import Say, silent

#: object-store bound of a local instance: small machines have a small /dev/shm
LOCAL_OBJECT_STORE_BYTES = 256 * 2**20


def ray_module():
    return optional_import("ray", needed_for="--ray (distributed indexing)", install="pip install 'dcssa-rt[ray]'")


class PhotoEncoderActor:
    """One per Ray actor: loads the bundle's photo encoder once, then embeds batches of file bytes."""

    def __init__(self, bundle: str, backend: str = "ort-cpu", threads: int | None = 1) -> None:
        from .backends import get_backend
        from .gallery import photo_runner

        self.bundle = Bundle.load(bundle)
        self.backend = get_backend(backend, threads=threads)
        self.runner = photo_runner(self.bundle, self.backend)

    def __call__(self, batch: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        from PIL import Image, UnidentifiedImageError

        from .gallery import embed_photos

        images, errors = [], [""] * len(batch["path"])
        for i, data in enumerate(batch["bytes"]):
            try:
                with Image.open(io.BytesIO(data)) as im:
                    im.load()
                    img = im.convert("RGB")
                if min(img.size) < 1:
                    raise OSError("empty image")
                images.append((i, img))
            except (OSError, UnidentifiedImageError, Image.DecompressionBombError) as exc:
                errors[i] = str(exc) or type(exc).__name__
        got = embed_photos(self.bundle, images, self.backend, batch_size=len(images) or 1, runner=self.runner)
        emb = np.full((len(errors), self.bundle.embed_dim), np.nan, np.float32)
        for i, e in got.items():
            emb[i] = e
        return {"path": np.asarray(batch["path"], dtype=object), "embedding": emb, "error": np.asarray(errors, dtype=object)}


def start_ray(address: str, *, object_store_bytes: int = LOCAL_OBJECT_STORE_BYTES, num_cpus: int | None = None,
              say: Say = silent) -> bool:
    """Connect to ``address`` or start a local instance ("local"); True when this call started Ray."""
    ray = ray_module()
    if ray.is_initialized():
        return False
    try:
        if address == "local":
            say(f"ray: starting a local instance ({num_cpus or os.cpu_count()} CPUs, object store "
                f"{object_store_bytes >> 20} MiB)")
            ray.init(num_cpus=num_cpus or os.cpu_count(), object_store_memory=object_store_bytes,
                     include_dashboard=False, log_to_driver=False, configure_logging=False)
        else:
            say(f"ray: connecting to {address}")
            ray.init(address=address, log_to_driver=False, configure_logging=False)
    except Exception as exc:  # noqa: BLE001 - any failure to start or reach Ray is the user's to fix
        raise BackendError(f"Ray could not start or connect ({address}): {str(exc).strip().splitlines()[0][:200]}",
                           hint="check the address (`ray status`), or drop --ray to embed in this process") from None
    return True


def ray_embedder(bundle: Bundle, *, address: str = "local", actors: int | None = None, batch_size: int = 8,
                 strict: bool = False, threads: int | None = None, backend: str = "ort-cpu",
                 object_store_bytes: int = LOCAL_OBJECT_STORE_BYTES, keep_running: bool = False,
                 say: Say = silent) -> Callable:
    """An :data:`~.gallery.Embedder` that runs the photo encoder in a Ray actor pool."""
    ray_module()  # a missing Ray is reported before anything runs

    def embed(paths: list[Path], on_skip, on_done) -> dict[int, np.ndarray]:
        ray = ray_module()
        started = start_ray(address, object_store_bytes=object_store_bytes, say=say)
        try:
            ctx = ray.data.DataContext.get_current()
            ctx.enable_progress_bars = False  # ours is the bar; Ray's would interleave with it
            where = {os.path.abspath(p): i for i, p in enumerate(paths)}
            pool = actors or max(1, int(ray.cluster_resources().get("CPU", 1)))
            say(f"ray: {len(paths)} photos on {pool} photo-encoder actors")
            # reading is I/O, not compute: reads take no CPU slot, so a pool as large as the cluster
            # (one actor per CPU) still leaves them room (with a CPU each they deadlock on 2 cores)
            ds = ray.data.read_binary_files(list(where), include_paths=True, num_cpus=0)
            ds = ds.map_batches(PhotoEncoderActor, batch_size=batch_size, batch_format="numpy",
                                compute=ray.data.ActorPoolStrategy(size=pool), num_cpus=1,
                                fn_constructor_kwargs={"bundle": str(Path(bundle.path).resolve()), "backend": backend,
                                                       "threads": threads or 1})
            out: dict[int, np.ndarray] = {}
            for block in ds.iter_batches(batch_size=None, batch_format="numpy"):
                done = 0
                for path, emb, err in zip(block["path"], block["embedding"], block["error"]):
                    i = where[os.path.abspath(str(path))]
                    if err:
                        if strict:
                            raise GalleryError(f"unreadable image ({err})", path=paths[i],
                                               hint="fix or remove it, or drop --strict")
                        on_skip(paths[i], OSError(err))
                    else:
                        out[i] = np.asarray(emb, np.float32)
                        done += 1
                on_done(done)
            return out
        except GalleryError:
            raise
        except Exception as exc:  # noqa: BLE001 - a failed Ray job: say what and where, no traceback
            raise BackendError(f"the Ray embedding job failed: {str(exc).strip().splitlines()[0][:300]}",
                               hint="see the Ray logs (/tmp/ray/session_latest/logs), or drop --ray") from None
        finally:
            if started and not keep_running:
                ray.shutdown()

    return embed
