"""`simtune recommend`: an honest optuna search for a deployment's autoscaling_config,
or for those of several deployments of a composed application (--topology), jointly.

Modules, in the order data flows:
  space      which fields are searched, over what (defaults, --space files)
  candidate  field values -> a deployment entry Ray accepts (or a pruned trial)
  target     what is tuned: one deployment, or an application's deployments (one code path;
             a prefill/decode application is one whose output goes into its LLMConfigs)
  problem    traces split by time, headroom scaling, simulating one candidate
  objective  cost, SLO and error-rate constraints, the worst case
  executor   inline / worker processes / Ray tasks
  study      the reproducible, resumable optuna search
  output     the YAML and its evidence header, round-tripped through Ray's schemas
  report     optuna's plots, timelines and a Markdown summary
  run        all of it: `recommend(RecommendOptions(...))`

    from simtune.tuner import RecommendOptions, recommend
    rec = recommend(RecommendOptions(traces=["prod.csv"], slos=["p99=2.0"], config="serve.yaml",
                                     service_time="lognormal:mean=0.1,p99=0.5"))
    print(rec.text)

    # an application: Serve config + topology, its autoscaled deployments tuned jointly
    rec = recommend(RecommendOptions(traces=["prod.csv"], slos=["p99=2.0"], config="serve.yaml",
                                     topology="topology.yaml", tune=["Model"]))

    # a prefill/decode application (build_pd_openai_app): TTFT/TPOT SLOs end to end, and
    # the co-located deployment of the same engine at equal GPUs beside it
    rec = recommend(RecommendOptions(traces=["mooncake.csv"], slos=["ttft_p99=20", "tpot_p99=0.1"],
                                     config="pd_serve.yaml", pd_engine="pd_engine.yaml",
                                     kv_bytes_per_token=327680, kv_bandwidth_gbps=400,
                                     cost_per_gpu_hour=4.0, compare_colocated=True))
    rec.colocated, rec.compare["recommended"]["holdout"]["ttft_p99"]
"""

from simtune.tuner.run import Recommendation, RecommendOptions, recommend

__all__ = ["RecommendOptions", "Recommendation", "recommend"]
