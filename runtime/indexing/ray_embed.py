"""`dcssa-rt index PHOTOS --ray [ADDRESS]`: embed a catalogue on Ray.

Ray Data reads the files (``read_binary_files``), a pool of actors runs the photo encoder
(``map_batches`` with a callable class that loads the bundle once per actor,
``compute=ActorPoolStrategy``), and the workers write the embeddings as Parquet shards
(``write_parquet``) into a shard folder beside the gallery; the driver then merges the shards in path
order into the gallery that :func:`~dcssa.runtime.indexing.build.build_gallery` writes (index, recall, labels: the same
code as the local path). Embeddings never pass through the driver while the job runs, and a job that
dies (a lost node, Ctrl-C, a bad file under ``--strict``) leaves its shards: the same command resumes
and embeds only the photos no shard holds (or whose file changed since). The shard folder goes once
the gallery is written.

The same command runs on a local instance (``--ray``: started here with a bounded object store) and on
a cluster (``--ray auto`` inside ``ray job submit``, or ``--ray ray://HEAD:10001``); every node must
be able to read the bundle and the photos and write the shard folder (a shared file system) and have
dcssa-rt installed.

Ray is optional (the ``[ray]`` extra) and imported only when ``--ray`` is given.
"""

from __future__ import annotations

import contextlib
import io
import json
import logging
import os
import shutil
import tempfile
import threading
from pathlib import Path

import numpy as np

from ..contract.bundle import Bundle
from ..errors import BackendError, GalleryError
from ..extras import require
from ..progress import Say, silent
from .options import LOCAL_RAY, IndexOptions

#: the job record in a shard folder: shards of another encoder or layout are never merged
SHARD_JOB = "job.json"
SHARD_FORMAT = 1

#: object-store bound of a local instance: small machines have a small /dev/shm
LOCAL_OBJECT_STORE_BYTES = 256 * 2**20


def ray_module():
    return require("ray", "--ray (distributed indexing)")


class PhotoEncoderActor:
    """One per Ray actor: loads the bundle's photo encoder once, then embeds batches of file bytes."""

    def __init__(self, bundle: str, backend: str = "ort-cpu", threads: int | None = 1) -> None:
        from ..backends import get_backend
        from .embed import photo_runner

        self.bundle = Bundle.load(bundle)
        self.backend = get_backend(backend, threads=threads)
        self.runner = photo_runner(self.bundle, self.backend)

    def __call__(self, batch: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        from PIL import Image, UnidentifiedImageError

        from .embed import embed_photos

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
        emb = [np.asarray(got[i], "<f4").tobytes() if i in got else b"" for i in range(len(errors))]
        paths = [str(p) for p in batch["path"]]
        stats = [_stat(p) for p in paths]
        # embeddings as little-endian float32 bytes: plain Parquet binary, readable without Ray's tensor types
        return {"path": np.asarray(paths, dtype=object), "size": np.asarray([s[0] for s in stats], np.int64),
                "mtime_ns": np.asarray([s[1] for s in stats], np.int64),
                "embedding": np.asarray(emb, dtype=object), "error": np.asarray(errors, dtype=object)}


def _stat(path: str) -> tuple[int, int]:
    """(size, mtime_ns) of a photo: a resumed job re-embeds files that changed since their shard."""
    try:
        st = os.stat(path)
        return st.st_size, st.st_mtime_ns
    except OSError:
        return -1, -1


def start_ray(address: str, *, object_store_bytes: int = LOCAL_OBJECT_STORE_BYTES, num_cpus: int | None = None,
              say: Say = silent) -> bool:
    """Connect to ``address`` or start a local instance (:data:`LOCAL_RAY`); True when this call started Ray."""
    ray = ray_module()
    if ray.is_initialized():
        return False
    try:
        if address == LOCAL_RAY:
            auth = os.environ.get("RAY_AUTH_MODE") or "token"
            say(f"ray: starting a local instance ({num_cpus or os.cpu_count()} CPUs, object store "
                f"{object_store_bytes >> 20} MiB, auth mode {auth})")
            # Ray's notice that token auth is on (its default) is said by the line above instead: its
            # own warning would land in the progress bar, or on stderr under -q
            with _quiet_logger("ray._private.authentication.authentication_token_setup"):
                ray.init(num_cpus=num_cpus or os.cpu_count(), object_store_memory=object_store_bytes,
                         include_dashboard=False, log_to_driver=False, configure_logging=False)
        else:
            say(f"ray: connecting to {address}")
            ray.init(address=address, log_to_driver=False, configure_logging=False)
    except Exception as exc:  # noqa: BLE001 - any failure to start or reach Ray is the user's to fix
        raise BackendError(f"Ray could not start or connect ({address}): {str(exc).strip().splitlines()[0][:200]}",
                           hint="check the address (`ray status`), or drop --ray to embed in this process") from None
    return True


@contextlib.contextmanager
def _quiet_logger(name: str):
    log = logging.getLogger(name)
    level = log.level
    log.setLevel(logging.ERROR)
    try:
        yield
    finally:
        log.setLevel(level)


class ShardFolder:
    """The Parquet shards of one embedding job (one bundle's photo encoder), and what they hold."""

    def __init__(self, path: Path, encoder_id: str, dim: int) -> None:
        self.path = Path(path)
        self.job = {"format": SHARD_FORMAT, "photo_encoder": encoder_id, "dim": dim}

    def open(self, say: Say = silent) -> None:
        """Create the folder, or keep it when it holds shards of this job (discard another job's)."""
        record = self.path / SHARD_JOB
        if record.is_file():
            try:
                same = json.loads(record.read_text()) == self.job
            except (OSError, ValueError):
                same = False
            if same:
                return
            say(f"ray: {self.path} holds shards of another photo encoder or format: discarding them")
            shutil.rmtree(self.path)
        elif self.path.exists() and any(self.path.iterdir()):
            raise GalleryError("the Ray shard folder exists but is not one (no job.json)", path=self.path,
                               hint="delete it or pass another --out")
        self.path.mkdir(parents=True, exist_ok=True)
        tmp = record.with_name(f".{SHARD_JOB}.tmp")
        tmp.write_text(json.dumps(self.job) + "\n")
        os.replace(tmp, record)

    def files(self) -> list[Path]:
        return sorted(self.path.glob("*.parquet"))

    def read(self, files: list[Path] | None = None, *, say: Say = silent) -> list[dict]:
        """Every readable shard's rows as column lists; a shard cut short by a dying job is dropped."""
        import pyarrow.parquet as pq

        tables = []
        for f in self.files() if files is None else files:
            try:
                tables.append(pq.read_table(f).to_pydict())
            except Exception as exc:  # noqa: BLE001 - a truncated file of a killed job: its photos are embedded again
                say(f"ray: dropping unreadable shard {f.name} ({type(exc).__name__}); its photos are embedded again")
                f.unlink(missing_ok=True)
        return tables

    def discard(self) -> None:
        shutil.rmtree(self.path, ignore_errors=True)


def default_shard_folder(out: Path) -> Path:
    """Where ``dcssa-rt index --ray --out OUT`` keeps its shards: a hidden folder beside OUT."""
    out = Path(out)
    return out.parent / f".{out.name}.ray-shards"


class _ShardProgress(threading.Thread):
    """Counts the photos in shards as the workers write them (Ray's own bars are off: ours is the bar)."""

    def __init__(self, shards: ShardFolder, known: set[Path], on_done) -> None:
        super().__init__(daemon=True)
        self.shards, self.seen, self.on_done = shards, set(known), on_done
        self.counted: dict[Path, int] = {}
        self.stop = threading.Event()

    def run(self) -> None:
        while not self.stop.wait(0.5):
            self.poll()

    def poll(self) -> None:
        import pyarrow.parquet as pq

        for f in self.shards.files():
            if f in self.seen:
                continue
            try:
                errors = pq.read_table(f, columns=["error"]).column("error").to_pylist()
            except Exception:  # noqa: BLE001 - still being written
                continue
            self.seen.add(f)
            self.counted[f] = sum(1 for e in errors if not e)
            self.on_done(self.counted[f])


class RayEmbedder:
    """An :data:`~dcssa.runtime.indexing.embed.Embedder` that runs the photo encoder in a Ray actor pool and writes shards.

    ``shards``: the shard folder (every node must reach it; default: a temporary folder here, which only
    a local instance can use). ``backend`` is resolved by each actor on its own node (``auto`` picks
    that node's best, as the local ``index`` does here). Call :meth:`discard_shards` once the gallery is written."""

    def __init__(self, bundle: Bundle, *, address: str = LOCAL_RAY, actors: int | None = None,
                 batch_size: int = IndexOptions.batch_size, strict: bool = IndexOptions.strict,
                 threads: int | None = None, backend: str = "ort-cpu", object_store_bytes: int = LOCAL_OBJECT_STORE_BYTES,
                 keep_running: bool = False, shards: Path | None = None, say: Say = silent) -> None:
        ray_module()  # a missing Ray is reported before anything runs
        self.bundle, self.address, self.actors, self.batch_size = bundle, address, actors, batch_size
        self.strict, self.threads, self.backend, self.say = strict, threads, backend, say
        self.object_store_bytes, self.keep_running = object_store_bytes, keep_running
        path = Path(shards) if shards is not None else Path(tempfile.mkdtemp(prefix="dcssa-ray-shards-")) / "shards"
        self.shards = ShardFolder(path, bundle.photo_encoder_id(), bundle.embed_dim)
        self.stats: dict = {}

    def __call__(self, paths: list[Path], on_skip, on_done) -> dict[int, np.ndarray]:
        where = {os.path.abspath(p): i for i, p in enumerate(paths)}
        self.shards.open(self.say)
        done = self._merge(self.shards.read(say=self.say), where)  # what an earlier, interrupted job left
        if done:
            self.say(f"ray: resuming: {len(done)} of {len(paths)} photos are already in {self.shards.path}")
            on_done(len(done))
        todo = [p for p, i in where.items() if i not in done]
        before = set(self.shards.files())
        watch = _ShardProgress(self.shards, before, on_done)
        if todo:
            self._run_job(todo, watch)
        new = [f for f in self.shards.files() if f not in before]
        tables = self.shards.read(new, say=self.say)
        rows = self._merge(tables, where, on_skip=on_skip, check_files=False)
        watch.poll()  # count shards the watcher had not seen, then top up to what the merge found
        on_done(max(0, len(rows) - sum(watch.counted.values())))
        missing = len(todo) - sum(len(t["path"]) for t in tables)
        if missing > 0:  # a job that returns without writing every photo: never a silently smaller gallery
            raise BackendError(f"the Ray job wrote {len(todo) - missing} of {len(todo)} photos to {self.shards.path}",
                               hint="run the same command again to embed the rest (the shards are kept)")
        self.stats = {"shards": len(self.shards.files()), "resumed": len(done), "embedded": len(todo)}
        return {**done, **rows}

    def _merge(self, tables: list[dict], where: dict[str, int], *, on_skip=None,
               check_files: bool = True) -> dict[int, np.ndarray]:
        """Rows of these shards for the photos asked for, whose file is unchanged (``check_files``: the
        shards of an earlier job; this job's were stat-ed by the workers just now); errors re-raised or
        reported (``on_skip``) only when given, so a resumed job retries the photos that failed."""
        out: dict[int, np.ndarray] = {}
        failed: dict[int, str] = {}
        for t in tables:
            for path, size, mtime, emb, err in zip(t["path"], t["size"], t["mtime_ns"], t["embedding"], t["error"]):
                i = where.get(os.path.abspath(path))
                if i is None or (check_files and _stat(path) != (size, mtime)):
                    continue
                if err:
                    failed[i] = err
                else:
                    out[i] = np.frombuffer(emb, "<f4").astype(np.float32)
        if on_skip is not None:
            paths = {i: p for p, i in where.items()}
            for i, err in sorted(failed.items()):
                if i in out:
                    continue
                if self.strict:
                    raise GalleryError(f"unreadable image ({err})", path=paths[i],
                                       hint=f"fix or remove it, or drop --strict; the embedded shards are kept in "
                                            f"{self.shards.path}, so the same command resumes")
                on_skip(Path(paths[i]), OSError(err))
        return out

    def _run_job(self, todo: list[str], watch: _ShardProgress) -> None:
        ray = ray_module()
        started = start_ray(self.address, object_store_bytes=self.object_store_bytes, say=self.say)
        try:
            ctx = ray.data.DataContext.get_current()
            ctx.enable_progress_bars = False  # ours is the bar; Ray's would interleave with it
            logging.getLogger("ray.data").setLevel(logging.WARNING)  # and so would its INFO lines
            logging.getLogger("ray.data._internal.progress").setLevel(logging.ERROR)  # "bars disabled": we did that
            pool = self.actors or max(1, int(ray.cluster_resources().get("CPU", 1)))
            self.say(f"ray: {len(todo)} photos on {pool} photo-encoder actors ({self.backend}), shards in {self.shards.path}")
            # reading is I/O, not compute: reads take no CPU slot, so a pool as large as the cluster
            # (one actor per CPU) still leaves them room (with a CPU each they deadlock on 2 cores)
            ds = ray.data.read_binary_files(todo, include_paths=True, num_cpus=0)
            ds = ds.map_batches(PhotoEncoderActor, batch_size=self.batch_size, batch_format="numpy",
                                compute=ray.data.ActorPoolStrategy(size=pool), num_cpus=1,
                                fn_constructor_kwargs={"bundle": str(Path(self.bundle.path).resolve()),
                                                       "backend": self.backend, "threads": self.threads or 1})
            watch.start()
            ds.write_parquet(str(self.shards.path), ray_remote_args={"num_cpus": 0})
        except GalleryError:
            raise
        except Exception as exc:  # noqa: BLE001 - a failed Ray job: say what and where, no traceback
            raise BackendError(f"the Ray embedding job failed: {str(exc).strip().splitlines()[0][:300]}",
                               hint=f"see the Ray logs (/tmp/ray/session_latest/logs), or drop --ray; the shards "
                                    f"written so far are kept in {self.shards.path}, so the same command resumes") from None
        finally:
            watch.stop.set()
            if watch.is_alive():
                watch.join()
            if started and not self.keep_running:
                ray.shutdown()

    def discard_shards(self) -> None:
        """Remove the shard folder (and the temporary parent this embedder made, if any)."""
        self.shards.discard()
        parent = self.shards.path.parent
        if parent.name.startswith("dcssa-ray-shards-"):
            shutil.rmtree(parent, ignore_errors=True)


def ray_embedder(bundle: Bundle, **kwargs) -> RayEmbedder:
    """The Ray :data:`~dcssa.runtime.indexing.embed.Embedder` (see :class:`RayEmbedder` for the options)."""
    return RayEmbedder(bundle, **kwargs)
