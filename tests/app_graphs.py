"""A bind graph for tests (importable as `app_graphs:app`): Ingress -> (Embed, Rank)."""

from ray import serve


@serve.deployment(max_ongoing_requests=16)
class Embed:
    async def __call__(self, x):
        return x


@serve.deployment(autoscaling_config={"min_replicas": 1, "max_replicas": 6, "target_ongoing_requests": 2})
class Rank:
    async def __call__(self, x):
        return x


@serve.deployment(num_replicas=2)
class Ingress:
    def __init__(self, embed, rank):
        self.embed, self.rank = embed, rank

    async def __call__(self, req):
        return await self.rank.remote(await self.embed.remote(req))


app = Ingress.bind(Embed.bind(), Rank.bind())
