"""The literature's routers on one cache, judged by the field's metrics (`dersim routers`).

Every router implements the abstract `base.Router` (hyperparameters in `__init__`, `fit(train)`,
then `route(questions, willingness_to_pay)` -> a route per question; what it needs and reads is
declared on its class); its routes are replayed through the cache (`Routes.replay`, by
`dersim.cache.routes`), so all routers are judged on the same cached answers. Sweeping the
willingness to pay gives each router a cost-quality curve, measured by AIQ, APGR, CPT(50%),
CPT(80%), the best score within the best single expert's cost and the cost to match it
(`metrics`), each with a 95% bootstrap interval over the evaluated questions (`estimate`).
Hyperparameters are chosen on the val part of the train split (`evaluate`); `registry` lists the
routers, one module each. DER joins them twice: `der_fqi` trains a DER policy by fitted
Q-iteration inside this protocol, and `der` turns a training run's policies into one curve per
algorithm.
"""
