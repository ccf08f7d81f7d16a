"""`simtune profile`: measure a real deployment and write a service-model YAML.

    simtune profile concurrency --import-path app:app --out model.yaml
    simtune profile batch --demo --max-batch-size 8 --out batch.yaml
    simtune profile from-log fidelity.json --out model.yaml

`fit` holds the fitting (usable without Ray), `runner` the Ray orchestration, `driver`
the load-driving process and `demo` the demo deployments.
"""
