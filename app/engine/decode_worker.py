"""A decode worker process: ``python -m app.engine.decode_worker SOCKET_FD [BUFFER_FD BUFFER_BYTES]``.

Receives ``(bytes, crop plan, max_pixels)`` jobs on the socket and answers
``("shared", layout, seconds)`` with the crops written into the shared buffer,
``("ok", crops, seconds)`` with the crops pickled when they do not fit in it,
or ``("error", exception)``. Imports Pillow, simplejpeg and NumPy only (``app.contract.preprocess``).
Started by ``app.engine.decode_pool``, which kills it when a job takes too long.
"""

from __future__ import annotations

import mmap
import os
import signal
import socket
import sys
import time
from multiprocessing.connection import Connection
from typing import Sequence

import numpy as np

from app.contract.preprocess import ImageDecodeError, ImageTooLargeError, decode_crops

READY = "ready"
_ALIGN = 64

Layout = list[tuple[tuple[int, ...], str, int]]  # (shape, dtype, offset) per array


class CropBuffer:
    """Shared memory (a memfd both processes map) that carries crops with one copy each way.

    Pickling megabytes of crops through a socket costs several context switches per
    image on a busy CPU; writing them here and sending only their layout does not.
    """

    def __init__(self, fd: int, size: int) -> None:
        self.fd = fd
        self.size = size
        self._map = mmap.mmap(fd, size)

    @classmethod
    def create(cls, size: int) -> "CropBuffer | None":
        """A new buffer, or None where the platform has no memfd (crops are then pickled)."""
        if not hasattr(os, "memfd_create") or size <= 0:
            return None
        fd = os.memfd_create("productrec-crops")
        os.ftruncate(fd, size)  # pages are only allocated once written
        return cls(fd, size)

    def write(self, arrays: Sequence[np.ndarray]) -> Layout | None:
        """Copy ``arrays`` in; None when they do not fit."""
        layout, offset = [], 0
        for array in arrays:
            layout.append((array.shape, array.dtype.str, offset))
            offset += -(-array.nbytes // _ALIGN) * _ALIGN
        if offset > self.size:
            return None
        for array, (shape, dtype, start) in zip(arrays, layout):
            np.ndarray(shape, dtype, buffer=self._map, offset=start)[...] = array
        return layout

    def read(self, layout: Layout) -> list[np.ndarray]:
        """Copies of the arrays ``write`` laid out (the buffer is reused by the next job)."""
        return [
            np.ndarray(shape, np.dtype(dtype), buffer=self._map, offset=start).copy() for shape, dtype, start in layout
        ]

    def close(self) -> None:
        self._map.close()
        os.close(self.fd)


def serve(connection: Connection, buffer: CropBuffer | None) -> None:
    """Answer jobs until the pool sends ``None`` or closes the connection."""
    connection.send((READY,))
    while True:
        try:
            job = connection.recv()
        except (EOFError, OSError):
            return
        if job is None:
            return
        started = time.perf_counter()
        try:
            crops = decode_crops(*job)
        except (ImageDecodeError, ImageTooLargeError) as exc:
            connection.send(("error", exc))
            continue
        except Exception as exc:  # anything else an odd image provokes is still bad input
            connection.send(("error", ImageDecodeError(f"cannot preprocess image: {type(exc).__name__}: {exc}")))
            continue
        layout = buffer.write(crops) if buffer is not None else None
        seconds = time.perf_counter() - started
        connection.send(("shared", layout, seconds) if layout is not None else ("ok", crops, seconds))


def main(argv: list[str]) -> None:
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # Ctrl-C stops the server, which then closes the pool
    sock = socket.socket(fileno=int(argv[1]))
    buffer = CropBuffer(int(argv[2]), int(argv[3])) if len(argv) > 3 else None
    serve(Connection(sock.detach()), buffer)


if __name__ == "__main__":
    main(sys.argv)
