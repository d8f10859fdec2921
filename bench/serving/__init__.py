"""Serving throughput against its limit: the real service over HTTP vs raw onnxruntime on the same ensemble.

    .venv/bin/python -m bench.serving                  # both ensembles, about 12 minutes on 2 cores
    .venv/bin/python -m bench.serving --cases small    # the Fashion-MNIST ensemble only, about 3 minutes

For each ensemble and each point (concurrency x dynamic batching on/off, and for the small
ensemble the batch endpoint at concurrency 1 and 8):

- end-to-end: ``productrec serve`` in a subprocess on a free loopback port (settings through
  ``PRODUCTREC_*``), loaded by client threads (``http.client``, one keep-alive connection each)
  posting JPEG product photos (Fashion-MNIST test images) as the raw request body to /v1/predict,
  or 16 at a time as multipart to /v1/predict/batch;
- the limit: ``Ensemble.member_probabilities`` in this process on the same images' crops, made
  beforehand by ``decode_crops`` (no decode worker, no HTTP), with the session options the service
  uses, replaying exactly the batch sizes the service formed in the round before it (the fastest
  of two replays).

End-to-end and limit rounds alternate, so a busy machine slows both alike; the figure reported is
the ratio end-to-end / limit (images/s). Where the rest goes comes from three sources: the timings
each response carries, the CPU time of every thread of the service, its decode workers and the
client (``/proc``), and a py-spy profile of the service's Python code under load. The HTTP floor,
a bare ASGI app (``bench/http_floor.py``) on the same uvicorn under the same client, tells what
HTTP alone costs per request.

Writes ``bench/results/serving.json``, ``docs/img/serving-benchmark.png`` and the generated part
of ``docs/serving-benchmark.md``. Repositories are built once under ``.cache/serving-bench``
(the realistic one holds three 50,000-class ResNet-50s, 1.4 GB). Needs py-spy (``pip install
py-spy``; the ``dev`` extra) unless ``--no-profile``.

Modules: ``cases`` (the two ensembles and the load on them), ``repository`` (building them),
``server`` (the service process), ``load`` (the HTTP client), ``limit`` (raw onnxruntime),
``cpu`` (CPU time by role from /proc), ``profile`` (py-spy), ``floor`` (the HTTP floors),
``run`` (points and cases), ``results``/``report``/``plot`` (the JSON read back, the page, the figure)
and ``cli``.
"""
