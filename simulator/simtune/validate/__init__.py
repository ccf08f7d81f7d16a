"""`simtune validate`: replay a config on real Ray Serve and measure the simulator's error.

Modules (each small, each citing the Ray code it mirrors or relies on):
  standin   the deployment under test: holds each request for its service_time
  loadgen   open-loop HTTP replay in its own process; send-lag validity rule
  observe   polls the controller (DeploymentDetails) every 0.25 s; decisions, startups
  harness   cluster + deploy + observe + replay, and cleanup on every exit path
  compare   fidelity metrics, event matching, gate, overlay plot
  calibrate fits startup model and per-request overheads -> SimParams YAML
  pipeline  the whole command: real run(s), simulation, report folder
  scenarios the three CI scenarios (step, zero, burst), sized for a 2-core machine
"""
