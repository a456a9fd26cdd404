"""How a cell is found: the mixers that turn alpha into edge weights (GDAS, DARTS, SNAS, DrNAS, random), the
supernet, DARTS's second-order gradient, cell scores (NASWOT and the zero-cost family) and their ranking,
perturbation selection, the final stage, cost budgets, collapse diagnostics, and the bilevel search loop.

(Named ``searching``, not ``search``: ``nas.search`` is the Python API's function.)"""
