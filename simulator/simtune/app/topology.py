"""An application's call graph: which deployment calls which, and what each does.

Serve composes deployments by passing bound deployments as constructor arguments
(`Ingress.bind(Model.bind())`); at request time a replica awaits
`DeploymentHandle.remote()` calls while keeping its `max_ongoing_requests` slot
(serve/_private/replica.py runs the handler as one task; the slot is released when the
handler returns). Each downstream call goes through the *calling replica's* own
handle router (serve/_private/router.py, one per handle per process), with its own
queue and metrics (reference section 6); simtune models one router per deployment,
shared by its callers (simtune.app.simulate says what that changes).

The topology YAML says what the code does at request time, which no config holds:

    ingress: Preprocess               # the deployment that receives the trace's requests
    application: default              # optional: the Serve config application
    streams_from: Model               # optional: whose tokens the client gets (TTFT/TPOT)
    deployments:
      Preprocess:
        service_time: const:0.02      # own work per call: a --service-time spec, `trace`
                                      # (the trace's service_time column) or column:NAME
        after_fraction: 0.25          # share of own work done after downstream calls return
        mode: sequential              # or parallel (asyncio.gather of the calls)
        calls:
          - to: Model
            probability: 1.0          # the call is made with this probability (seeded)
            count: 1                  # fan-out: this many calls
      Model:
        calls: [Postprocess]
        service_model: model_llm.yaml # optional: a service-model YAML file or mapping
        model_after_calls: false      # true: the service model runs after the downstream calls
                                      # (its service_time is then the wait before the model)
      Postprocess:
        service_time: const:0.01
        multiplex:                    # optional: @serve.multiplexed (fixed service times)
          max_num_models_per_replica: 4
          load_time: const:2.0        # a miss loads the model (behind the replica's lock)
          model_id_column: model_id   # the trace's column of model ids

It can also be read from a Python `Deployment.bind(...)` graph where the user's code is
importable: `import_path: module:app` (Serve's own import-path syntax) takes the edges and
each deployment's decorator options from the code (`topology_from_application`); the
YAML's deployments then only add what code cannot say (service_time, after_fraction,
mode, probability/count of an edge via `calls`, service_model, multiplex).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Optional


from simtune.errors import InputError

MODES = ("sequential", "parallel")


@dataclass(frozen=True)
class Call:
    to: str
    probability: float = 1.0
    count: int = 1


@dataclass(frozen=True)
class Multiplex:
    """`@serve.multiplexed(max_num_models_per_replica=N)` and the model load time."""

    max_num_models_per_replica: int
    load_time: str = "const:0"
    model_id_column: str = "model_id"


@dataclass
class Node:
    name: str
    service_time: str = "trace"
    after_fraction: float = 0.0
    mode: str = "sequential"
    calls: list[Call] = field(default_factory=list)
    service_model: Any = None  # path or mapping (simtune.service_models), None: fixed times
    multiplex: Optional[Multiplex] = None
    # The service model runs after the downstream calls return (own time: the wait before
    # it, e.g. a KV-cache transfer); default: before them.
    model_after_calls: bool = False


@dataclass
class Topology:
    ingress: str
    nodes: dict[str, Node]
    application: Optional[str] = None
    source: str = "<topology>"
    # The deployment whose tokens/chunks the client receives (TTFT/TPOT end to end), e.g.
    # the decode deployment of a prefill/decode application; None: the ingress's own.
    streams_from: Optional[str] = None
    # Options of each deployment from the code's decorators (import_path form), which a
    # Serve config overrides field by field, as Serve does.
    code_options: dict = field(default_factory=dict)

    def order(self) -> list[str]:
        """Deployments reachable from the ingress, parents before children."""
        seen: list[str] = []

        def visit(name: str) -> None:
            if name in seen:
                return
            seen.append(name)
            for c in self.nodes[name].calls:
                visit(c.to)

        visit(self.ingress)
        return seen

    def parents(self, name: str) -> list[str]:
        return [n for n, node in self.nodes.items() if any(c.to == name for c in node.calls)]

    @classmethod
    def single(cls, name: str, service_time: str = "trace", service_model: Any = None,
               multiplex: Optional[Multiplex] = None) -> "Topology":
        return cls(ingress=name, nodes={name: Node(name, service_time, service_model=service_model,
                                                   multiplex=multiplex)})


def _fail(where: str, msg: str) -> InputError:
    return InputError(f"{where}: {msg}")


def _number(value: Any, where: str, *, minimum: float = 0.0, maximum: Optional[float] = None,
            integer: bool = False) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise _fail(where, f"must be a number, got {value!r}")
    if integer and int(value) != value:
        raise _fail(where, f"must be an integer, got {value!r}")
    if value < minimum or (maximum is not None and value > maximum):
        rng = f">= {minimum:g}" + (f" and <= {maximum:g}" if maximum is not None else "")
        raise _fail(where, f"must be {rng}, got {value!r}")
    return int(value) if integer else float(value)


def _check_time_spec(spec: Any, where: str) -> str:
    if not isinstance(spec, str) or not spec.strip():
        raise _fail(where, f"must be a service-time spec string (const:0.05, trace, column:NAME), got {spec!r}")
    spec = spec.strip()
    if spec == "trace" or spec.startswith("column:"):
        if spec.startswith("column:") and not spec[7:]:
            raise _fail(where, "column: needs a column name, e.g. column:model_s")
        return spec
    from simtune.service_time import parse_service_time

    try:
        parse_service_time(spec)
    except InputError as exc:
        raise _fail(where, str(exc)) from None
    return spec


def _parse_node(name: str, data: Any, where: str, base: Path) -> Node:
    if data is None:
        data = {}
    if not isinstance(data, dict):
        raise _fail(where, "must be a mapping")
    known = {"service_time", "after_fraction", "mode", "calls", "service_model", "multiplex", "model_after_calls"}
    unknown = sorted(set(data) - known)
    if unknown:
        raise _fail(f"{where}.{unknown[0]}", f"unknown field (known: {', '.join(sorted(known))})")
    node = Node(name)
    if "service_time" in data:
        node.service_time = _check_time_spec(data["service_time"], f"{where}.service_time")
    if "after_fraction" in data:
        node.after_fraction = _number(data["after_fraction"], f"{where}.after_fraction", maximum=1.0)
    mode = data.get("mode", "sequential")
    if mode not in MODES:
        raise _fail(f"{where}.mode", f"must be one of {', '.join(MODES)}, got {mode!r}")
    node.mode = mode
    calls = data.get("calls") or []
    if not isinstance(calls, list):
        raise _fail(f"{where}.calls", "must be a list of {to: NAME, probability: P, count: N}")
    for k, c in enumerate(calls):
        cw = f"{where}.calls[{k}]"
        if isinstance(c, str):
            c = {"to": c}
        if not isinstance(c, dict) or "to" not in c:
            raise _fail(cw, "needs `to: DEPLOYMENT`")
        extra = sorted(set(c) - {"to", "probability", "count"})
        if extra:
            raise _fail(f"{cw}.{extra[0]}", "unknown field (known: to, probability, count)")
        node.calls.append(Call(str(c["to"]), _number(c.get("probability", 1.0), f"{cw}.probability", maximum=1.0),
                               _number(c.get("count", 1), f"{cw}.count", minimum=1, integer=True)))
    sm = data.get("service_model")
    if sm is not None:
        if isinstance(sm, str):
            p = Path(sm)
            sm = str(p if p.is_absolute() else base / p)
        elif not isinstance(sm, dict):
            raise _fail(f"{where}.service_model", "must be a file path or a mapping")
        node.service_model = sm
    mac = data.get("model_after_calls", False)
    if not isinstance(mac, bool):
        raise _fail(f"{where}.model_after_calls", f"must be true or false, got {mac!r}")
    if mac and sm is None:
        raise _fail(f"{where}.model_after_calls", "needs a service_model (it says when the model runs)")
    node.model_after_calls = mac
    mx = data.get("multiplex")
    if mx is not None:
        if not isinstance(mx, dict) or "max_num_models_per_replica" not in mx:
            raise _fail(f"{where}.multiplex", "needs max_num_models_per_replica")
        extra = sorted(set(mx) - {"max_num_models_per_replica", "load_time", "model_id_column"})
        if extra:
            raise _fail(f"{where}.multiplex.{extra[0]}",
                        "unknown field (known: max_num_models_per_replica, load_time, model_id_column)")
        node.multiplex = Multiplex(
            int(_number(mx["max_num_models_per_replica"], f"{where}.multiplex.max_num_models_per_replica",
                        minimum=1, integer=True)),
            _check_time_spec(str(mx.get("load_time", "const:0")), f"{where}.multiplex.load_time"),
            str(mx.get("model_id_column", "model_id")))
    return node


def check_graph(topo: Topology) -> None:
    """Every call names a known deployment and the graph has no cycle (Serve's bind
    graphs are DAGs; a cycle here would be an infinite request)."""
    where = topo.source
    if topo.ingress not in topo.nodes:
        raise _fail(f"{where}: ingress", f"names {topo.ingress!r}, which is not under deployments "
                                         f"(known: {', '.join(topo.nodes)})")
    for name, node in topo.nodes.items():
        for k, c in enumerate(node.calls):
            if c.to not in topo.nodes:
                raise _fail(f"{where}: deployments.{name}.calls[{k}].to",
                            f"names {c.to!r}, which is not under deployments (known: {', '.join(topo.nodes)})")
    if topo.streams_from is not None and topo.streams_from not in topo.nodes:
        raise _fail(f"{where}: streams_from", f"names {topo.streams_from!r}, which is not under deployments")
    state: dict[str, int] = {}
    path: list[str] = []

    def visit(name: str) -> None:
        state[name] = 1
        path.append(name)
        for c in topo.nodes[name].calls:
            if state.get(c.to) == 1:
                cyc = path[path.index(c.to):] + [c.to]
                raise _fail(f"{where}: deployments.{name}.calls", f"cycle {' -> '.join(cyc)}")
            if c.to not in state:
                visit(c.to)
        path.pop()
        state[name] = 2

    for name in topo.nodes:
        if name not in state:
            visit(name)


def parse_topology(data: Any, source: str = "<topology>", base: Optional[Path] = None) -> Topology:
    if not isinstance(data, dict):
        raise InputError(f"{source}: expected a mapping with `ingress` and `deployments`")
    unknown = sorted(set(data) - {"ingress", "application", "deployments", "streams_from", "import_path"})
    if unknown:
        raise InputError(f"{source}: unknown field {unknown[0]!r} "
                         "(known: ingress, application, deployments, streams_from, import_path)")
    if data.get("import_path"):
        return _from_import_path(data, source, base or Path("."))
    deps = data.get("deployments")
    if not isinstance(deps, dict) or not deps:
        raise InputError(f"{source}: deployments must be a non-empty mapping of NAME: {{...}}")
    base = base or Path(".")
    nodes = {str(n): _parse_node(str(n), d, f"{source}: deployments.{n}", base) for n, d in deps.items()}
    ingress = data.get("ingress")
    if ingress is None:
        if len(nodes) != 1:
            raise InputError(f"{source}: ingress is missing (which deployment receives the trace's requests?)")
        ingress = next(iter(nodes))
    topo = Topology(str(ingress), nodes, data.get("application"), source, data.get("streams_from"))
    check_graph(topo)
    return topo


def load_topology(path: str | Path) -> Topology:
    """A topology YAML file, or an import path `module:app` of a bind graph (no such file,
    a colon): the edges and options from the code, own times from defaults."""
    from simtune.serve_config import load_yaml_file

    text = str(path)
    if not Path(text).exists() and ":" in text and not text.endswith((".yaml", ".yml", ".json")):
        return parse_topology({"import_path": text}, f"--topology {text}", Path.cwd())
    path = Path(path)
    return parse_topology(load_yaml_file(path), str(path), path.parent)


def topology_from_application(app: Any, service_time: str = "trace") -> tuple[Topology, dict[str, dict]]:
    """Edges from a Python `Deployment.bind(...)` graph, and each deployment's options.

    A bound deployment's constructor arguments that are themselves bound applications
    are the handles it will call (serve/_private/build_app.py:_build_app_recursive
    replaces them with DeploymentHandles). Every edge becomes one sequential call made
    with probability 1; the own work of non-ingress deployments defaults to 0 (only the
    ingress has the trace's service times) unless a topology YAML says otherwise.
    Returns the topology and `{name: deployment options}` as Ray's DeploymentSchema.
    """
    from ray.serve.deployment import Application, deployment_to_schema

    if not isinstance(app, Application):
        raise InputError(f"expected a serve Application (Deployment.bind(...)), got {type(app).__name__}")
    nodes: dict[str, Node] = {}
    options: dict[str, dict] = {}

    def children_of(bound: Any) -> list[Any]:
        out: list[Any] = []

        def walk(x: Any) -> None:
            if isinstance(x, Application):
                out.append(x)
            elif isinstance(x, (list, tuple, set)):
                for y in x:
                    walk(y)
            elif isinstance(x, dict):
                for y in x.values():
                    walk(y)

        walk(list(bound.init_args) + list((bound.init_kwargs or {}).values()))
        return out

    def visit(a: Any, is_root: bool) -> str:
        bound = a._bound_deployment
        name = bound.name
        if name in nodes:
            return name
        node = Node(name, service_time if is_root else "const:0")
        nodes[name] = node
        schema = deployment_to_schema(bound)
        options[name] = schema.model_dump(exclude_unset=True) if hasattr(schema, "model_dump") else schema.dict(
            exclude_unset=True)
        for child in children_of(bound):
            node.calls.append(Call(visit(child, False)))
        return name

    root = visit(app, True)
    topo = Topology(root, nodes, source="<bind graph>")
    check_graph(topo)
    return topo, options


def _from_import_path(data: dict, source: str, base: Path) -> Topology:
    """Edges and options from the code's bind graph; times etc. from the YAML."""
    import sys

    path = str(data["import_path"])
    if ":" not in path and "." not in path:
        raise InputError(f"{source}: import_path {path!r}: expected module:attribute (Serve's syntax)")
    from ray._common.utils import import_attr

    added = str(base.resolve())
    sys.path.insert(0, added)
    try:
        app = import_attr(path)
    except Exception as exc:  # noqa: BLE001 - any import failure is the user's input
        raise InputError(f"{source}: import_path {path!r} cannot be imported: {type(exc).__name__}: {exc}") from None
    finally:
        if added in sys.path:
            sys.path.remove(added)
    topo, options = topology_from_application(app)
    deps = data.get("deployments") or {}
    if not isinstance(deps, dict):
        raise InputError(f"{source}: deployments must be a mapping of NAME: {{...}}")
    for name, d in deps.items():
        where = f"{source}: deployments.{name}"
        if name not in topo.nodes:
            raise InputError(f"{where}: {import_path_hint(name, topo, path)}")
        node = _parse_node(str(name), {k: v for k, v in (d or {}).items() if k != "calls"}, where, base)
        code_calls = topo.nodes[name].calls
        for k, c in enumerate((d or {}).get("calls") or []):
            c = {"to": c} if isinstance(c, str) else c
            parsed = _parse_node(str(name), {"calls": [c]}, where, base).calls[0]
            if parsed.to not in {x.to for x in code_calls}:
                raise InputError(f"{where}.calls[{k}].to: {name!r} holds no handle to {parsed.to!r} in {path} "
                                 f"(it calls: {', '.join(x.to for x in code_calls) or 'nothing'})")
            code_calls = [parsed if x.to == parsed.to else x for x in code_calls]
        node.calls = code_calls
        topo.nodes[name] = node
    topo.source = source
    topo.application = data.get("application")
    topo.streams_from = data.get("streams_from")
    topo.code_options = options
    check_graph(topo)
    return topo


def import_path_hint(name: str, topo: Topology, path: str) -> str:
    return f"no deployment {name!r} in the bind graph of {path} (it has: {', '.join(topo.nodes)})"
