"""Ray Serve's side of troupe-serve's bench (benches/ray/serve_compare.sh).

Serves one deployment of 2 replicas whose handler returns its input, on
ray.init(num_cpus=2), at http://127.0.0.1:8000/, until killed:

    python benches/ray/serve_bench.py noop      # as noop_requests_per_s
    python benches/ray/serve_bench.py batched   # @serve.batch(32, 2 ms)

A GET has an empty body: the handler returns it (an empty string), as
Troupe's echo returns JSON null.
"""

import sys
import time

import ray
from ray import serve
from starlette.requests import Request


@serve.deployment(num_replicas=2, max_ongoing_requests=5)
class Noop:
    async def __call__(self, request: Request) -> bytes:
        return await request.body()


@serve.deployment(num_replicas=2, max_ongoing_requests=64)
class Batched:
    @serve.batch(max_batch_size=32, batch_wait_timeout_s=0.002)
    async def handle(self, bodies):
        return list(bodies)

    async def __call__(self, request: Request) -> bytes:
        return await self.handle(await request.body())


def main() -> None:
    mode = sys.argv[1] if len(sys.argv) > 1 else "noop"
    app = {"noop": Noop, "batched": Batched}[mode].bind()
    ray.init(num_cpus=2, include_dashboard=False)
    serve.start(http_options={"host": "127.0.0.1", "port": 8000})
    serve.run(app, route_prefix="/")
    print("ready", flush=True)
    while True:
        time.sleep(3600)


if __name__ == "__main__":
    main()
